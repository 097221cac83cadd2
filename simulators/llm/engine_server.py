"""One model server per machine, shared by every worker process on it, and stopped with them.

The in-process engine (`backend: vllm`) belongs to one Python process, so on a worker that runs
several SDK processes (Beam's multi-processing mode, a multi-core GPU VM) each would load its own
copy of the weights, or one process would feed the GPU while the other cores idle. Beam's own vLLM
model handler answers this with one `vllm serve` per machine and every process a client; its
server outlives the pipeline. Here the same shape is kept, with a lifetime:

- an engine's state folder (`<engine_dir>/<digest of the engine settings>/`) holds `lock` (an
  flock), `state.json` (supervisor pid, its pid namespace, port, status), `beat` (the
  supervisor's heartbeat), `leases/` (one file per client process, named by its pid namespace,
  pid and start time), `spec.json` (the server command), `starts.log` (one line per server
  start) and the logs;
- a client (`EngineLease.acquire`) takes the lock, writes its lease and joins the live supervisor,
  or, if there is none (first client, or stale state of a dead one), starts one; then it waits
  for `ready`. A thread of the client refreshes its lease's mtime every `lease_timeout_s / 5`
  (a thread, so a busy event loop never delays it);
- the supervisor (`python -m simulators.llm.engine_server FOLDER`, its own session so a Ctrl-C or
  a killed worker does not take it down) starts the server, polls its `/health`, and drops a
  lease not refreshed for `lease_timeout_s` (a client SIGKILLed or stopped in any pid namespace)
  and, at once, a lease written from its own pid namespace whose process is gone (exited, crashed
  or SIGKILLed: no cooperation needed); once no lease is left for `linger_s`, it stops the
  server's whole process group and removes the state. The server gets SIGTERM if the supervisor
  itself dies (PR_SET_PDEATHSIG), so nothing outlives both;
- a server that dies after it was ready is restarted by the supervisor alone (the one process
  that notices for everyone), on the same port, with backoff, at most `restarts` times; meanwhile
  clients' requests wait as for any server that refuses connections.

Clients may live in other pid namespaces (e.g. one container per SDK process) as long as they see
the same folder (the same kernel's clock for mtimes) and the server's 127.0.0.1: pids are only
trusted within the namespace that wrote them; across namespaces a lease lives by its heartbeat
and the supervisor by `beat` (stale after `lease_timeout_s`), so a dead supervisor is replaced
by a client of any namespace and a live one is never mistaken for dead. Standard library only:
the supervisor imports nothing else, so it starts in a fraction of a second and holds no model
code.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

POLL_S = 0.2
STOP_WAIT_S = 30.0
"""How long a server gets to shut down after SIGTERM before its process group is killed."""
PORT_WAIT_S = 60.0
"""How long a new supervisor waits for the previous server's port to be freed (stale state)."""
TAIL_CHARS = 2000
LEASE_TIMEOUT_S = 10.0
"""Default: a lease (or the supervisor's beat) not refreshed for this long is dead."""
BEATS_PER_TIMEOUT = 5
"""Heartbeats per timeout: four may be missed (a stalled disk, a long GIL hold) without harm."""
ENGINE_DIR_ENV = "AGENTMILL_ENGINE_DIR"


class EngineServerError(RuntimeError):
    """The shared server could not be started or failed for good; the message says why."""


def default_root() -> Path:
    """`$AGENTMILL_ENGINE_DIR`, else a per-user folder in the system temp dir."""
    if os.environ.get(ENGINE_DIR_ENV):
        return Path(os.environ[ENGINE_DIR_ENV]).expanduser()
    return Path(tempfile.gettempdir()) / f"agentmill-engines-{os.getuid()}"


def process_id(pid: int) -> str | None:
    """`pid`'s start time (a stable identity), or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:  # no procfs (macOS): existence only
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "0"
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # dead, only waiting to be reaped
        return None
    return fields[19]


def pid_namespace() -> str:
    """This process's pid namespace (`pid:[inode]`); '' where there is no procfs."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def namespace_id() -> str:
    """This pid namespace's inode as digits, for lease names ('0' where there is no procfs)."""
    return "".join(char for char in pid_namespace() if char.isdigit()) or "0"


def lease_name(pid: int) -> str:
    """`<pid namespace>-<pid>-<start time>`: a reused pid or another namespace's equal pid is
    never taken for this process."""
    return f"{namespace_id()}-{pid}-{process_id(pid)}"


def alive(pid: int, ident: str | None) -> bool:
    return pid > 0 and ident is not None and process_id(pid) == ident


def age(path: Path) -> float:
    """Seconds since `path` was last written or touched; infinite when it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def supervisor_alive(folder: Path, state: dict[str, Any] | None, timeout: float) -> bool:
    """Whether the supervisor named by `state` runs: by its pid from its own pid namespace (exact
    and immediate), else by its heartbeat file (another container's pids mean nothing here)."""
    if not state:
        return False
    if state.get("pidns") == pid_namespace():
        return alive(state["supervisor"], state.get("supervisor_id"))
    return age(folder / "beat") < timeout


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(json.dumps(data))
    os.replace(scratch, path)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """The engine's machine-wide lock (released by the kernel if its holder dies)."""
    with open(folder / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def live_leases(folder: Path, timeout: float) -> list[str]:
    """Lease names of live client processes; the others are deleted. Call locked.

    A lease is dead when not refreshed for `timeout` (any namespace: SIGKILL, SIGSTOP, a lost
    container), or at once when it was written from this pid namespace and its process is gone.
    """
    found = []
    leases = folder / "leases"
    mine = namespace_id()
    for lease in leases.iterdir() if leases.is_dir() else []:
        namespace, _, rest = lease.name.partition("-")
        pid, _, ident = rest.partition("-")
        gone = namespace == mine and not (pid.isdigit() and alive(int(pid), ident))
        if gone or age(lease) > timeout:
            lease.unlink(missing_ok=True)
        else:
            found.append(lease.name)
    return found


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - TAIL_CHARS))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def starts(folder: Path) -> int:
    """How many times a server was started for this engine folder (tests and reports read it)."""
    try:
        return len((folder / "starts.log").read_text().splitlines())
    except FileNotFoundError:
        return 0


class EngineLease:
    """This process's claim on the shared server of one engine folder.

    `spec` is what a supervisor needs to start the server: `command` (its `{port}` replaced),
    `env`, `restarts`, `linger_s`, `start_s`, `lease_timeout_s`. `acquire` returns the server's
    base URL and keeps the lease alive from a thread until `release`.
    """

    def __init__(self, folder: Path, spec: dict[str, Any], name: str) -> None:
        self.folder = folder
        self.spec = spec
        self.name = name
        self.url: str | None = None
        self.started_here = False
        self._lock = threading.Lock()
        self._supervisors: list[subprocess.Popen[bytes]] = []
        self._names: dict[int, str] = {}
        self._beating: threading.Event | None = None

    @property
    def lease(self) -> Path:
        pid = os.getpid()  # a forked child is another client
        if pid not in self._names:
            self._names[pid] = lease_name(pid)
        return self.folder / "leases" / self._names[pid]

    @property
    def timeout(self) -> float:
        """The lease timeout: the supervisor's (from spec.json) if shorter than this client's."""
        theirs = (read_json(self.folder / "spec.json") or {}).get("lease_timeout_s")
        mine = float(self.spec.get("lease_timeout_s", LEASE_TIMEOUT_S))
        return min(mine, float(theirs)) if theirs else mine

    def acquire(self) -> str:
        """Join the machine's server for this engine, starting it if none runs; wait until it
        answers. Idempotent; raises EngineServerError when it fails or is not ready in time."""
        with self._lock:
            if self.url is not None and self.lease.exists():
                return self.url
            deadline = time.monotonic() + float(self.spec["start_s"])
            self.started_here = self._join_or_start(deadline)
            self._beat()
            self.url = self._wait_ready(deadline)
            return self.url

    def _beat(self) -> None:
        """Start the heartbeat thread (once per process and acquire/release cycle)."""
        if self._beating is not None and not self._beating.is_set():
            return
        stop = self._beating = threading.Event()
        every = self.timeout / BEATS_PER_TIMEOUT
        lease = self.lease

        def run() -> None:
            while not stop.wait(every):
                try:
                    os.utime(lease)
                except FileNotFoundError:
                    self._rejoin(lease)
                except OSError:
                    pass  # a transient error: the next beat tries again

        threading.Thread(target=run, name="engine-lease", daemon=True).start()

    def _rejoin(self, lease: Path) -> None:
        """The supervisor dropped this lease (this process was stopped, or a clock jumped): take
        it again while the server runs, else let the next request start or join anew."""
        with locked(self.folder):
            state = read_json(self.folder / "state.json")
            if supervisor_alive(self.folder, state, self.timeout) and (
                state or {}).get("status") != "stopping":
                lease.touch()
                return
        with self._lock:
            self.url = None

    def check(self) -> None:
        """Called while the server refuses connections: raise if it failed for good; start a
        new supervisor (once, under the lock) if the old one is gone; else let requests wait."""
        state = read_json(self.folder / "state.json")
        if state and supervisor_alive(self.folder, state, self.timeout):
            if state["status"] == "failed":
                raise EngineServerError(self._failure(state))
            return
        with self._lock:
            self.url = None
        url = self.acquire()
        if state and url != state.get("url"):
            raise EngineServerError(
                f"{self.name}: the shared server came back at {url}, not {state.get('url')}"
            )

    def release(self) -> None:
        """Drop this process's lease; the supervisor stops the server when none is left."""
        with self._lock:
            self.url = None
            if self._beating is not None:
                self._beating.set()
            self.lease.unlink(missing_ok=True)

    def _join_or_start(self, deadline: float) -> bool:
        (self.folder / "leases").mkdir(parents=True, exist_ok=True)
        while True:
            with locked(self.folder):
                state = read_json(self.folder / "state.json")
                live = supervisor_alive(self.folder, state, self.timeout)
                if not (live and state["status"] == "stopping"):  # type: ignore[index]
                    self.lease.touch()
                    if live:
                        return False
                    self._start_supervisor(state)
                    return True
            if time.monotonic() > deadline:
                raise EngineServerError(f"{self.name}: the previous shared server never stopped")
            time.sleep(POLL_S)  # the last server is stopping: wait for it, then start anew

    def _start_supervisor(self, stale: dict[str, Any] | None) -> None:
        """Start a supervisor for a new server (call locked). A stale state's port is kept, so
        clients of a dead supervisor find the new server where they left the old one."""
        port = int(stale["port"]) if stale else free_port()
        command = [part.replace("{port}", str(port)) for part in self.spec["command"]]
        write_json(self.folder / "spec.json", {**self.spec, "command": command, "port": port})
        (self.folder / "beat").touch()  # alive to other namespaces until its own beats start
        with open(self.folder / "supervisor.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "simulators.llm.engine_server", str(self.folder)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Reap it if it ends while this process lives, so it is never a zombie that looks alive.
        threading.Thread(target=process.wait, daemon=True).start()
        self._supervisors.append(process)
        write_json(self.folder / "state.json", {
            "supervisor": process.pid,
            "supervisor_id": process_id(process.pid),
            "port": port,
            "url": f"http://127.0.0.1:{port}/v1",
            "status": "starting",
            "error": None,
            "pidns": pid_namespace(),  # whose pids these are; also for diagnostics
        })

    def _wait_ready(self, deadline: float) -> str:
        while True:
            state = read_json(self.folder / "state.json")
            if state and state["status"] == "failed":
                raise EngineServerError(self._failure(state))
            if not supervisor_alive(self.folder, state, self.timeout):
                raise EngineServerError(
                    f"{self.name}: the shared server's supervisor ended before the server was "
                    f"ready; {self.folder / 'supervisor.log'}: "
                    f"{tail(self.folder / 'supervisor.log')}"
                )
            if state["status"] == "ready":
                return str(state["url"])
            if time.monotonic() > deadline:
                raise EngineServerError(
                    f"{self.name}: the shared server was not ready after {self.spec['start_s']} s; "
                    f"{self.folder / 'server.log'}: {tail(self.folder / 'server.log')}"
                )
            time.sleep(POLL_S)

    def _failure(self, state: dict[str, Any]) -> str:
        return (
            f"{self.name}: the shared server failed: {state.get('error')}; "
            f"{self.folder / 'server.log'}: {tail(self.folder / 'server.log')}"
        )


# -- the supervisor ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the server's child, before exec: SIGTERM when the supervisor dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """Runs the server of one engine folder while clients hold leases; see the module doc."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spec = read_json(folder / "spec.json") or {}
        self.server: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.restarts = 0
        self.started = 0.0
        self.stop = False

    def update(self, **fields: Any) -> None:
        with locked(self.folder):
            state = read_json(self.folder / "state.json") or {}
            if state.get("supervisor") == os.getpid():
                write_json(self.folder / "state.json", {**state, **fields})

    def start_server(self) -> None:
        port = int(self.spec["port"])
        waited = time.monotonic()
        while not port_free(port) and time.monotonic() - waited < PORT_WAIT_S:
            time.sleep(POLL_S)  # a dead supervisor's server is still shutting down
        with open(self.folder / "starts.log", "a") as log:
            log.write(json.dumps({"time": time.time(), "supervisor": os.getpid()}) + "\n")
        with open(self.folder / "server.log", "ab") as log:
            self.server = subprocess.Popen(
                self.spec["command"],
                env={**os.environ, **self.spec.get("env", {})},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.ready = False
        self.started = time.monotonic()
        self.update(status="starting", server=self.server.pid)

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.spec['port']}/health"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop_server(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left
            os.killpg(server.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=5)

    def fail(self, error: str) -> None:
        """Stay (so joining clients learn why) but serve nothing until the clients are gone."""
        self.stop_server()
        self.update(status="failed", error=error)

    def watch_server(self) -> None:
        server = self.server
        if server is None:
            return
        code = server.poll()
        if code is not None:
            self.server = None
            if not self.ready:
                self.fail(f"the server exited with code {code} before it was ready")
            elif self.restarts < int(self.spec.get("restarts", 0)):
                self.restarts += 1
                self.update(status="restarting", error=f"exited with code {code}")
                time.sleep(min(30.0, 2.0 ** (self.restarts - 1)))
                self.start_server()
            else:
                self.fail(f"the server exited with code {code} and was restarted "
                          f"{self.restarts} times already")
        elif not self.ready:
            if self.healthy():
                self.ready = True
                self.update(status="ready", error=None)
            elif time.monotonic() - self.started > float(self.spec.get("start_s", 600)):
                self.fail(f"the server was not ready after {self.spec.get('start_s')} s")

    def beat(self, every: float) -> None:
        """Tell clients of other pid namespaces this supervisor lives (a thread: a server start
        or stop that blocks the main loop for seconds must not look like death)."""
        while True:
            with contextlib.suppress(OSError):
                (self.folder / "beat").touch()
            time.sleep(every)

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: setattr(self, "stop", True))
        idle_since: float | None = None
        linger = float(self.spec.get("linger_s", 0.0))
        timeout = float(self.spec.get("lease_timeout_s", LEASE_TIMEOUT_S))
        threading.Thread(target=self.beat, args=(timeout / BEATS_PER_TIMEOUT,), daemon=True).start()
        try:
            self.start_server()
            while not self.stop:
                time.sleep(POLL_S)
                with locked(self.folder):
                    if live_leases(self.folder, timeout):
                        idle_since = None
                    else:
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since >= linger:
                            state = read_json(self.folder / "state.json") or {}
                            write_json(self.folder / "state.json", {**state, "status": "stopping"})
                            break
                self.watch_server()
        finally:
            self.stop_server()
            with locked(self.folder):
                state = read_json(self.folder / "state.json") or {}
                if state.get("supervisor") == os.getpid():
                    (self.folder / "state.json").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m simulators.llm.engine_server ENGINE_FOLDER", file=sys.stderr)
        return 2
    Supervisor(Path(argv[0])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
