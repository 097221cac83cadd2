"""The terminal during a run: agentmill's own lines, not vLLM's, Triton's or torch's.

vLLM and the libraries under it write warnings, progress bars and NUMA notes to stderr from the
process and from the engine's own subprocess, and Python warnings (FutureWarning...) go there too.
`run_console` sends all of that to the run's log file and keeps the terminal for agentmill; with
`verbose` the terminal gets it as well. The log file also keeps agentmill's lines and each finished
item at debug level.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
OURS = re.compile(r"\[ *\d+s\] |agentmill: ")
"""agentmill's lines from Beam's worker processes, which inherit the captured descriptor."""
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore",
}
"""For the libraries (and the engine subprocesses) that read their verbosity from the
environment; set only when the user has not set them."""


class _Tee(io.TextIOBase):
    """agentmill's stderr: the terminal, plus the log file without colour codes."""

    def __init__(self, terminal: TextIO, log: TextIO | None) -> None:
        self.terminal, self.log = terminal, log
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.terminal.write(text)
            if self.log is not None:
                self.log.write(ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.terminal.flush()
        if self.log is not None:
            self.log.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.terminal, "encoding", "utf-8")


class _OursOnly(_Tee):
    """Everyone else's stderr: the log file, and the terminal only for agentmill's own lines
    (from code that prints to sys.stderr) or with `verbose`."""

    def __init__(self, terminal: TextIO, log: TextIO | None, verbose: bool) -> None:
        super().__init__(terminal, log)
        self.verbose = verbose
        self._partial = ""

    def write(self, text: str) -> int:
        with self._lock:
            if self.log is not None:
                self.log.write(ANSI.sub("", text))
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                if self.verbose or OURS.match(line):
                    self.terminal.write(line + "\n")
        return len(text)


@contextmanager
def run_console(log_path: Path | None, verbose: bool) -> Iterator[TextIO]:
    """Route third-party output to `log_path` (and to the terminal only when `verbose`) for the
    duration; yields the stream for agentmill's own messages (the terminal and the log)."""
    from pipelines.progress import BOARD

    saved_env = {key: os.environ.get(key) for key in QUIET_ENV}
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    log: TextIO | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8", buffering=1)
    saved_stderr, saved_fd, reader = sys.stderr, None, None
    terminal: TextIO = sys.stderr
    if _real_stderr():
        saved_fd, reader, terminal = _capture_fd2(log, verbose)
    user = _Tee(terminal, log)
    sys.stderr = _OursOnly(terminal, log, verbose)
    handlers = _logging(log, verbose)
    # Libraries that log without configuring logging (or call basicConfig mid-run) would write
    # to whatever sys.stderr is then: give them the process's own stderr, which is captured.
    root, last_resort = logging.getLogger(), logging.lastResort
    fallback = logging.StreamHandler(saved_stderr)
    fallback.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    if not root.handlers:
        root.addHandler(fallback)
    logging.lastResort = fallback
    BOARD.stream, BOARD.also = (terminal if terminal.isatty() else user), log
    try:
        yield user
    finally:
        BOARD.close()
        BOARD.stream, BOARD.also = None, None
        sys.stderr.flush()
        sys.stderr = saved_stderr
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        if reader is not None:
            reader.join(timeout=1.0)
        for logger, handler in [*handlers, (root, fallback)]:
            logger.removeHandler(handler)
        logging.lastResort = last_resort
        logging.captureWarnings(False)
        if log is not None:
            log.close()
        for key, value in saved_env.items():  # a test process runs many CLIs in turn
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _real_stderr() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False  # a test runner's buffer


def _logging(log: TextIO | None, verbose: bool) -> list[tuple[logging.Logger, logging.Handler]]:
    """Python warnings and library loggers to the log file (and the terminal when verbose);
    agentmill's per-item lines at debug level to the log file (and the terminal when verbose)."""
    added: list[tuple[logging.Logger, logging.Handler]] = []
    logging.captureWarnings(True)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings_log = logging.getLogger("py.warnings")
    warnings_log.propagate = False
    ours = logging.getLogger("agentmill")
    ours.setLevel(logging.DEBUG if (log is not None or verbose) else logging.INFO)
    ours.propagate = False
    if verbose:  # stderr is the terminal plus the log file
        targets: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    elif log is not None:
        targets = [logging.StreamHandler(log)]
    else:
        targets = [logging.NullHandler()]
    for handler in targets:
        handler.setFormatter(formatter)
        for logger in (warnings_log, ours):
            logger.addHandler(handler)
            added.append((logger, handler))
    return added


def _capture_fd2(log: TextIO | None, verbose: bool) -> tuple[int, threading.Thread, TextIO]:
    """Point file descriptor 2 (the process's and its subprocesses' stderr) at a pipe read into
    the log; agentmill keeps the terminal through a duplicate of the old descriptor."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    terminal = io.TextIOWrapper(
        io.FileIO(os.dup(saved), "w"), encoding="utf-8", errors="replace", line_buffering=True
    )

    def pump() -> None:
        with io.FileIO(read_end, "r") as source:
            for raw in source:  # lines (a final one may lack its newline)
                text = raw.decode("utf-8", errors="replace")
                if log is not None:
                    try:
                        log.write(text)
                    except ValueError:
                        pass  # closed at the end of the run
                if verbose or OURS.match(text):
                    terminal.write(text)
                    terminal.flush()

    reader = threading.Thread(target=pump, name="agentmill-stderr", daemon=True)
    reader.start()
    return saved, reader, terminal


def log_path_for(out: Any) -> Path | None:
    """`OUT/agentmill.log` for a local run folder; none for an object store."""
    from pipelines import storage

    path = storage.run_path(out)
    return path / "agentmill.log" if isinstance(path, Path) else None
