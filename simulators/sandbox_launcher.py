"""The first code that runs inside a sandbox (`python -I -S launch.py CONFIG_JSON`).

Standard library only: it runs on the bare interpreter the sandbox exposes. It drops from the
sandbox's root to the workspace's unprivileged uid (so the kernel's process-count limit applies:
root is exempt from RLIMIT_NPROC), sets the resource limits, runs the payload (a script, a code
string or pytest) in this same process, and reports how it ended on a status pipe (its fd
is named in the config) as one JSON line: the exit code, the uncaught exception's type, the
background processes it had to kill, and for pytest the outcome of every test. The host names
the error from that report; the payload could write to that pipe too, which can only mislabel
its own failure, not escape.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

_OWN_FILES = {__file__, os.path.join(os.path.dirname(os.__file__), "runpy.py")}


def _limit(kind: int, value: int, hard: int | None = None) -> None:
    resource.setrlimit(kind, (value, value if hard is None else hard))


def _others() -> list[int]:
    """Processes in this pid namespace other than its init (1) and this one."""
    me = os.getpid()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            try:
                with open(f"/proc/{name}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":  # an exited child nobody waited for is not running
                pids.append(int(name))
    return pids


def _report(fd: int, status: dict) -> None:
    try:
        os.write(fd, (json.dumps(status) + "\n").encode())
    except OSError:
        pass


class _Collector:
    """A pytest plugin that records each test's outcome by node id."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            previous = self.outcomes.get(report.nodeid)
            if previous in (None, "passed"):
                outcome = report.outcome if report.when == "call" else "error"
                if report.when != "call" and report.outcome == "skipped":
                    outcome = "skipped"
                self.outcomes[report.nodeid] = outcome

    def pytest_collectreport(self, report) -> None:
        if report.outcome == "failed":
            self.outcomes[report.nodeid or "<collection>"] = "error"


def main() -> None:
    config = json.loads(sys.argv[1])
    uid = int(config["uid"])
    if uid >= 0 and os.getuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.chdir("/workspace")  # after the drop: the workspace belongs to the uid alone
    os.environ["PWD"] = "/workspace"
    limits = config["limits"]
    # SIGXCPU at the soft limit names the error; SIGKILL a second later if it is caught.
    _limit(resource.RLIMIT_CPU, int(limits["cpu_s"]), int(limits["cpu_s"]) + 1)
    _limit(resource.RLIMIT_AS, int(limits["memory_mb"]) << 20)
    _limit(resource.RLIMIT_NPROC, int(limits["processes"]))
    _limit(resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20)
    _limit(resource.RLIMIT_NOFILE, 256)
    _limit(resource.RLIMIT_CORE, 0)
    os.umask(0o022)
    for path in reversed(config.get("path", [])):
        sys.path.insert(0, path)
    me = os.getpid()
    status: dict = {"exit_code": 0, "exception": None, "background": 0}
    collector = _Collector()
    try:
        if config["mode"] == "code":
            sys.argv = ["-c", *config.get("args", [])]
            sys.path.insert(0, "")
            code = compile(config["code"], "<code>", "exec")
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        elif config["mode"] == "script":
            import runpy

            sys.argv = [config["script"], *config.get("args", [])]
            sys.path.insert(0, os.path.dirname(os.path.abspath(config["script"])))
            runpy.run_path(config["script"], run_name="__main__")
        else:
            import pytest

            sys.argv = ["pytest", *config.get("args", [])]
            status["exit_code"] = int(pytest.main(config.get("args", []), plugins=[collector]))
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            status["exit_code"] = code or 0
        else:
            print(code, file=sys.stderr)
            status["exit_code"] = 1
    except BaseException as exc:
        if os.getpid() != me:  # a forked child unwinding through this frame
            os._exit(1)
        import traceback

        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
            tb = tb.tb_next  # show the payload's frames, not the launcher's or runpy's
        traceback.print_exception(type(exc), exc, tb)
        status["exit_code"] = 1
        status["exception"] = type(exc).__name__
    if os.getpid() != me:
        os._exit(status["exit_code"] if isinstance(status["exit_code"], int) else 1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    others = _others()
    for pid in others:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    status["background"] = len(others)
    if config["mode"] == "pytest":
        status["tests"] = collector.outcomes
    _report(int(config["status_fd"]), status)
    os._exit(status["exit_code"] if 0 <= status["exit_code"] < 256 else 1)


if __name__ == "__main__":
    main()
