"""Contained execution: run Python code on a workspace's files, with no network and hard limits.

Why bubblewrap (`bwrap`, Debian's `bubblewrap`, installed by `install.sh`): it builds the whole
sandbox from kernel namespaces in one small setuid-free binary, starts in a few milliseconds,
and takes an allow-list of mounts, so the sandbox sees *only* what is bound into it. Docker or
gVisor need a daemon and are slow to start; a hand-written `unshare` + chroot needs a prepared
root tree and root privileges in our own code; seccomp-only jails (nsjail, firejail) are not in
every distribution. What a sandbox gets:

- namespaces: new mount, pid, ipc, uts and network namespaces. The network namespace holds only
  its own loopback: a socket to 127.0.0.1 reaches nothing of the host, and any other address is
  unreachable, so no packet leaves the sandbox;
- files: an empty read-only root with, read-only, the interpreter (its binary, its standard
  library with `site-packages` masked, libpython) and the system's shared libraries, pytest and
  its few pure-Python dependencies under `/opt/agentmill/lib`; a private `/tmp` (tmpfs, 16 MiB);
  and the workspace read-write at `/workspace`. No `/etc`, no home, no repository;
- a fresh, unprivileged uid per workspace (the launcher drops to it before any payload code
  runs; as root, bwrap runs in privileged mode with only CAP_SETUID/CAP_SETGID kept for that
  drop), so RLIMIT_NPROC bounds the processes (the kernel exempts root from it);
- limits (`Limits`): CPU seconds, address space, processes, file size and open files as
  rlimits; wall time and output size enforced here (the sandbox is killed past them); the
  workspace's total size and file count are checked after every run;
- an empty environment (`--clearenv`; bwrap itself is started with an empty one), so no API key
  or other variable of the parent reaches the code;
- when the payload ends, its pid namespace ends with it: no background process survives.

Unprivileged (not root), bwrap builds the same sandbox inside a user namespace of its own
(`--unshare-user`): the code runs as the caller's uid mapped into it, and the process limit
holds for the processes of that namespace. A machine where such a sandbox cannot be made (no
`bwrap`, namespaces refused) gets `SandboxUnavailable` from `require_sandbox()` at start, with
the reason and, for a non-root user, the setting to change (`userns_refusal`); nothing ever
falls back to running code unconfined.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno as errno_names
import functools
import importlib.util
import json
import os
import secrets
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SANDBOX_WORKSPACE = "/workspace"
LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
LIB_DIR = "/opt/agentmill/lib"
HIDDEN_DIR = "/opt/agentmill/hidden"
PYTEST_MODULES = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py")
"""pytest and its pure-Python dependencies, bound read-only so `run_tests` works inside."""
STATUS_FD_ENV = "status_fd"
UID_RANGE = (1_000_000, 2_000_000_000)
"""Per-workspace uids are drawn from here: far above any real account on the host."""

ERRNO_ERRORS = {
    errno_names.ENETUNREACH: "network_unreachable",
    errno_names.EHOSTUNREACH: "network_unreachable",
    errno_names.ECONNREFUSED: "connection_refused",
    errno_names.EROFS: "read_only_filesystem",
    errno_names.ENOENT: "file_not_found",
    errno_names.EACCES: "permission_denied",
    errno_names.EPERM: "permission_denied",
    errno_names.EAGAIN: "process_limit",
    errno_names.EFBIG: "file_size_limit",
    errno_names.EMFILE: "open_files_limit",
}


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made on this machine; says why and what to install."""


@dataclass(frozen=True)
class Limits:
    """What one sandboxed run may use."""

    cpu_s: int = 10
    wall_s: float = 20.0
    memory_mb: int = 512
    processes: int = 64
    output_bytes: int = 200_000
    file_mb: int = 32
    workspace_mb: int = 64
    workspace_files: int = 2_000


@dataclass
class RunResult:
    """How a sandboxed run ended. `error` names what stopped it (None: exit code 0)."""

    exit_code: int
    stdout: str
    stderr: str
    error: str | None = None
    exception: str | None = None
    background: int = 0
    tests: dict[str, str] | None = None
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def answer(self) -> dict[str, Any]:
        """The result as a tool answer: output, exit code and the named error, if any."""
        body: dict[str, Any] = {
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }
        if self.error:
            body["error"] = self.error
        if self.notes:
            body["notes"] = self.notes
        return body


def new_uid() -> int:
    """A fresh unprivileged uid for one workspace (also its gid)."""
    low, high = UID_RANGE
    return low + secrets.randbelow(high - low)


def _module_path(name: str) -> tuple[str, str] | None:
    """(host path, name inside LIB_DIR) of a top-level module, or None if not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return next(iter(spec.submodule_search_locations)), name
    if spec.origin and spec.origin.endswith(".py"):
        return spec.origin, f"{name}.py"
    return None


@functools.cache
def interpreter_binds() -> tuple[tuple[str, str], ...]:
    """(host, inside) read-only binds that make the interpreter and pytest work in a sandbox."""
    binds: list[tuple[str, str]] = []
    executable = os.path.realpath(sys.executable)
    binds.append((executable, executable))
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    binds.append((stdlib, stdlib))
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        library = os.path.join(libdir, sysconfig.get_config_var("INSTSONAME") or "")
        if os.path.isfile(library):
            binds.append((os.path.realpath(library), library))
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for system in (f"/usr/lib/{multiarch}" if multiarch else "/usr/lib", "/lib64"):
        if os.path.isdir(system):
            binds.append((system, system))
    for name in PYTEST_MODULES:
        found = _module_path(name)
        if found:
            binds.append((found[0], f"{LIB_DIR}/{found[1]}"))
    return tuple(binds)


def _parents(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def bwrap_argv(workspace: Path, launcher_config: dict[str, Any], hidden: Path | None) -> list[str]:
    """The bwrap command line for one run (see the module doc for what each part is for)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: run ./install.sh or apt-get install bubblewrap"
        )
    argv = [
        bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", SANDBOX_WORKSPACE,
        "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        "--setenv", "PYTHONHASHSEED", "0", "--hostname", "sandbox",
    ]
    if os.geteuid() == 0:
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # unprivileged bwrap needs a user namespace; the caller's own uid runs the code
        argv += ["--unshare-user"]
    binds = list(interpreter_binds())
    binds.append((str(LAUNCHER), "/opt/agentmill/launch.py"))
    made: set[str] = set()
    for _, inside in binds:
        for parent in _parents(inside):
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", parent]
    for host, inside in binds:
        argv += ["--ro-bind", host, inside]
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    if os.path.isdir(os.path.join(stdlib, "site-packages")):
        argv += ["--tmpfs", os.path.join(stdlib, "site-packages")]
    if hidden is not None:
        argv += ["--ro-bind", str(hidden), HIDDEN_DIR]
    argv += [
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/bin", "/bin",
        "--dev", "/dev", "--proc", "/proc",
        "--size", str(16 << 20), "--perms", "1777", "--tmpfs", "/tmp",
        "--bind", str(workspace), SANDBOX_WORKSPACE,
        "--remount-ro", "/",
        os.path.realpath(sys.executable), "-I", "-S", "-B", "/opt/agentmill/launch.py",
        json.dumps(launcher_config),
    ]
    return argv


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def concurrency() -> int:
    """Sandboxes running at once per event loop (`AGENTMILL_SANDBOXES`, default 4 per core)."""
    return int(os.environ.get("AGENTMILL_SANDBOXES") or 4 * (os.cpu_count() or 1))


def _gate() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(concurrency())
    return gate


async def _read_capped(
    stream: asyncio.StreamReader, sink: bytearray, budget: list[int], over: asyncio.Event
) -> None:
    """Read `stream` to its end, keeping what the shared budget allows; set `over` past it.

    It keeps reading (and dropping) after the budget runs out: a pipe nobody reads never
    reaches its end, and asyncio waits for every pipe to close before a process counts as done.
    """
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        sink += chunk[: max(budget[0], 0)]
        budget[0] -= len(chunk)
        if budget[0] < 0:
            over.set()


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


async def run(
    workspace: Path,
    *,
    uid: int,
    mode: str,
    code: str = "",
    script: str = "",
    args: list[str] | None = None,
    limits: Limits | None = None,
    hidden: Path | None = None,
) -> RunResult:
    """Run Python in a sandbox over `workspace` (mounted at /workspace) and say how it ended.

    `mode` is `code` (run `code`), `script` (run the workspace file `script`) or `pytest` (run
    pytest with `args`; each test's outcome comes back in `tests`). `hidden`, a host folder,
    is mounted read-only at /opt/agentmill/hidden (hidden tests the code cannot change).
    """
    limits = limits or Limits()
    read_end, write_end = os.pipe()
    config = {
        "uid": uid if os.geteuid() == 0 else -1,
        "mode": mode,
        "code": code,
        "script": script,
        "args": list(args or []),
        "limits": {
            "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb,
            "processes": limits.processes, "file_mb": limits.file_mb,
        },
        "path": [SANDBOX_WORKSPACE, LIB_DIR],
        STATUS_FD_ENV: write_end,
    }
    try:
        argv = bwrap_argv(workspace, config, hidden)
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        raise
    async with _gate():
        return await _run_process(argv, limits, read_end, write_end)


async def _run_process(
    argv: list[str], limits: Limits, read_end: int, write_end: int
) -> RunResult:
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={}, pass_fds=(write_end,),
            start_new_session=True,
        )
    except OSError as exc:
        os.close(read_end)
        raise SandboxUnavailable(f"cannot start bwrap: {exc}") from exc
    finally:
        os.close(write_end)
    status_reader = asyncio.StreamReader(limit=1 << 24)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(status_reader), os.fdopen(read_end, "rb", 0)
    )
    stdout, stderr = bytearray(), bytearray()
    budget = [limits.output_bytes]
    over = asyncio.Event()
    assert process.stdout is not None and process.stderr is not None
    readers = asyncio.gather(
        _read_capped(process.stdout, stdout, budget, over),
        _read_capped(process.stderr, stderr, budget, over),
        process.wait(),
    )
    status_task = asyncio.ensure_future(status_reader.read(1 << 24))
    overflow = asyncio.ensure_future(over.wait())
    error: str | None = None
    try:
        done, _ = await asyncio.wait(
            {readers, overflow}, timeout=limits.wall_s, return_when=asyncio.FIRST_COMPLETED
        )
        if overflow in done:
            error = "output_limit"
        elif readers not in done:
            error = "wall_timeout"
    finally:
        overflow.cancel()
        if process.returncode is None:
            _kill(process)
        try:  # killed, the sandbox's pid namespace is gone and every pipe reaches its end
            await asyncio.wait_for(asyncio.shield(readers), 30)
        except TimeoutError:
            readers.cancel()
        try:
            raw_status = await asyncio.wait_for(status_task, 5)
        except TimeoutError:
            raw_status = b""
        transport.close()
    status = _parse_status(raw_status)
    exit_code = process.returncode if process.returncode is not None else -1
    if status is not None:
        exit_code = int(status.get("exit_code") or 0)
    result = RunResult(
        exit_code=exit_code,
        stdout=_decode(bytes(stdout)),
        stderr=_decode(bytes(stderr)),
        exception=(status or {}).get("exception"),
        background=int((status or {}).get("background") or 0),
        tests=(status or {}).get("tests"),
        duration_s=round(time.perf_counter() - started, 4),
    )
    result.error = error or _name_error(result, status, process.returncode)
    if error == "output_limit":
        result.notes.append(f"output cut at {limits.output_bytes} bytes; the run was stopped")
    elif error == "wall_timeout":
        result.notes.append(f"stopped after {limits.wall_s:g} s of wall time")
    if result.background:
        result.notes.append(f"{result.background} background process(es) were killed")
    return result


def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL bwrap; its child dies with it (--die-with-parent) and takes the pid namespace."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            process.kill()
        except ProcessLookupError:
            pass


def _parse_status(raw: bytes) -> dict[str, Any] | None:
    for line in reversed(raw.decode("utf-8", errors="replace").splitlines()):
        try:
            status = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(status, dict):
            return status
    return None


def _name_error(
    result: RunResult, status: dict[str, Any] | None, returncode: int | None
) -> str | None:
    """The named error of a run that ended by itself (None: it succeeded)."""
    if status is None:  # the launcher never reported: killed by a signal or a rlimit
        code = returncode or 0
        signum = code - 128 if code > 128 else -code
        if signum == signal.SIGXCPU:
            return "cpu_limit"
        if signum == signal.SIGKILL:
            return "killed"
        if signum == signal.SIGXFSZ:
            return "file_size_limit"
        if signum == signal.SIGSEGV:
            return "crashed"
        return f"exit_code_{code}" if code else "no_status"
    exception = result.exception
    if exception == "MemoryError":
        return "memory_limit"
    if exception:
        last = result.stderr.strip().splitlines()[-1:] or [""]
        for number, name in ERRNO_ERRORS.items():
            if f"[Errno {number}]" in last[0]:
                return name
        return exception
    if result.background:
        return "background_process"
    if result.exit_code != 0:
        return f"exit_code_{result.exit_code}"
    return None


def run_sync(workspace: Path, **kwargs: Any) -> RunResult:
    """`run` from synchronous code (checks, benchmarks, the code task gate); inside a running
    event loop it runs on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run(workspace, **kwargs))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run(workspace, **kwargs)).result()


USERNS_SYSCTLS = (
    ("kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=15000"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1",
     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile that "
     "lets /usr/bin/bwrap create user namespaces)"),
)
"""(sysctl under /proc/sys, the value that forbids user namespaces to non-root, the fix)."""


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def userns_refusal() -> str | None:
    """Which kernel setting forbids unprivileged user namespaces, with the command that allows
    them; None when none does (they may still be refused, e.g. by a container's seccomp)."""
    for name, forbidding, fix in USERNS_SYSCTLS:
        if _read_sysctl(name) == forbidding:
            setting = name.replace("/", ".")
            return (
                f"{setting} = {forbidding} forbids unprivileged user namespaces; as root run "
                f"`{fix}` (and put the setting in /etc/sysctl.d/ to keep it)"
            )
    return None


def _unprivileged_advice() -> str:
    """What to do when bwrap cannot make a sandbox for a non-root user."""
    refusal = userns_refusal()
    cause = refusal or (
        "the machine refused a user namespace (inside a container its seccomp or AppArmor "
        "profile can refuse them even when the kernel allows them)"
    )
    return (
        f"as uid {os.geteuid()}, bubblewrap needs an unprivileged user namespace, and {cause}; "
        "or run agentmill as root, where bwrap needs no user namespace"
    )


@functools.cache
def _probe() -> str | None:
    """None when a sandbox works on this machine, else why not."""
    if sys.platform != "linux":
        return f"sandboxes need Linux namespaces; this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: run ./install.sh or apt-get install bubblewrap"
    folder = Path(tempfile.mkdtemp(prefix="agentmill-probe-"))
    try:
        uid = new_uid()
        if os.geteuid() == 0:
            os.chown(folder, uid, uid)
        code = (
            "import socket,os\n"
            "try:\n socket.create_connection(('192.0.2.1', 9), timeout=2); print('NET')\n"
            "except OSError: pass\n"
            "print('ok', os.getuid(), os.path.exists('/etc'))"
        )
        result = run_sync(folder, uid=uid, mode="code", code=code)
    except SandboxUnavailable as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot start a sandbox: {exc}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not result.ok or not result.stdout.startswith("ok"):
        said = result.stderr.strip()[-400:] or result.error
        advice = f"; {_unprivileged_advice()}" if os.geteuid() != 0 else ""
        return f"a sandbox did not start ({said}){advice}"
    if "NET" in result.stdout or "True" in result.stdout:
        return "a sandbox was not contained (network or host files visible)"
    if os.geteuid() == 0 and result.stdout.split()[1] == "0":
        return "a sandbox kept root"
    return None


def require_sandbox() -> None:
    """Raise SandboxUnavailable (with the reason) unless sandboxes work here; checked once."""
    problem = _probe()
    if problem is not None:
        raise SandboxUnavailable(f"sandbox unavailable: {problem}")
