"""The output folder belongs to the user until a run claims it: what `--out` may touch, and the
lock that keeps two runs out of one folder.

A run only replaces a folder that is missing, empty, or carries the marker an earlier run left
(`.agentmill-run`); anything else is refused before a byte is deleted (`force` lets a run claim
such a folder, and even then only the run's own entries are replaced). Empty and root outputs
are refused outright. While a run works, it holds `.agentmill.lock` in the folder: locally an
exclusive `flock` on that file (the kernel drops it when the process dies, so a killed run's
lock is stale by construction), plus the holder's host and pid written inside so a refused
second run can say who holds it. Object stores have no locks: there the lock object is
written and checked, which catches a second run started later but not two started in the same
instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipelines import storage

MARKER = ".agentmill-run"
LOCK = ".agentmill.lock"
RUN_ENTRIES = (
    "toolspecs", "agents", "tasks", "trajectories", "sft", "rl", "rejected", "failures",
    "plots", "manifest.json", "README.md", "_work", MARKER, LOCK, "agentmill.log",
)
"""Everything a run writes in its folder: the only names it ever replaces or deletes."""


class OutputError(ValueError):
    """An output folder a run must not write to: names the folder and why, and what to do."""


def check_path(out: str) -> None:
    """Refuse outputs no run should clear: empty, the filesystem root, a bucket's root."""
    text = str(out)
    if not text.strip():
        raise OutputError("--out is empty; name a folder for the run, e.g. --out runs/demo")
    if storage.is_uri(text):
        scheme, _, rest = text.partition("://")
        if "/" not in rest.strip("/"):
            raise OutputError(
                f"--out {text!r} is a bucket's root; name a folder in it, e.g. {scheme}://"
                f"{rest.strip('/') or 'BUCKET'}/runs/demo"
            )
        return
    path = Path(text).expanduser().resolve()
    if path == Path(path.anchor):
        raise OutputError(f"--out {text!r} is the filesystem root; name a folder for the run")
    if path == Path.home().resolve():
        raise OutputError(f"--out {text!r} is your home folder; name a folder for the run")
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {text} is a file, not a folder; name a folder for the run")


_OPENED_FIRST = frozenset({LOCK, "agentmill.log"})
"""A run's own entries that exist before it claims the folder (the CLI checks the folder
before it opens its log there)."""


def check_claimable(
    out: str, force: bool = False, entries: tuple[str, ...] = RUN_ENTRIES
) -> None:
    """Refuse (OutputError) an output a run could not claim, touching nothing: what `claim`
    would refuse, checked before anything (a log file) is written there. An object store gets
    no log, and is only reached once the run starts (`claim`). `entries`: what the command
    writes there (the refusal lists them)."""
    check_path(out)
    if storage.is_uri(out):
        return
    foreign = _foreign_entries(storage.run_path(out))
    if foreign is not None and not force:
        raise OutputError(_refusal(storage.run_path(out), foreign, entries))


def _foreign_entries(out: storage.RunPath) -> list[str] | None:
    """Names in `out` when it holds something and no marker; None when it may be claimed."""
    if isinstance(out, Path):
        if out.exists() and not out.is_dir():
            return [out.name]
        if not out.is_dir():
            return None
        names = sorted(p.name for p in out.iterdir() if p.name not in _OPENED_FIRST)
        return None if not names or MARKER in names else names
    if storage.exists(out / MARKER):
        return None
    prefix = str(out).rstrip("/") + "/"
    (result,) = FileSystems.match([f"{prefix}**"])
    names = sorted({m.path[len(prefix):].split("/", 1)[0] for m in result.metadata_list})
    names = [n for n in names if n and n not in _OPENED_FIRST]
    return names or None


def claim(
    out: storage.RunPath, force: bool = False, entries: tuple[str, ...] = RUN_ENTRIES
) -> None:
    """Make `out` this run's folder (write the marker), or refuse if it is someone else's.

    Every command that writes a folder (`run`, `code-tasks`) claims it this way; `entries` are
    the names that command writes there, listed in a refusal."""
    foreign = _foreign_entries(out)
    if foreign is not None and not force:
        raise OutputError(_refusal(out, foreign, entries))
    body = json.dumps({"agentmill": "run folder", "claimed": time.time()}) + "\n"
    if not storage.exists(out / MARKER):
        storage.write_text(out / MARKER, body)


def _refusal(
    out: storage.RunPath, foreign: list[str], entries: tuple[str, ...] = RUN_ENTRIES
) -> str:
    shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
    return (
        f"--out {out} is not empty ({shown}) and is not an agentmill run folder (no "
        f"{MARKER} marker); a run only replaces an empty folder or its own. Choose another "
        "folder, or pass --force to let the run replace its own entries there ("
        + ", ".join(entries[:12]) + "); nothing else is ever touched"
    )


def _holder_text(info: dict[str, Any]) -> str:
    started = info.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {since})"


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
            "argv": sys.argv[:8]}


def _read_info(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class RunLocked(OutputError):
    """Another run holds the output folder's lock."""


@contextlib.contextmanager
def locked(out: storage.RunPath) -> Iterator[None]:
    """Hold the run lock on `out` for the block; refuse (RunLocked) if another run holds it."""
    if isinstance(out, Path):
        with _local_lock(out):
            yield
    else:
        with _object_store_lock(out):
            yield


@contextlib.contextmanager
def _local_lock(out: Path) -> Iterator[None]:
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_info(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            if _alive_here(info) is False:  # a forked child (an engine process) kept the lock
                raise RunLocked(
                    f"--out {out} is locked by a process left over from a run that is gone "
                    f"({_holder_text(info)}), such as an engine process it started: stop it "
                    f"(`fuser {path}` names it) and run again"
                ) from None
            raise RunLocked(
                f"--out {out} is in use by another run: {_holder_text(info)}, lock "
                f"{path}. Wait for it to finish or stop it, or choose another folder"
            ) from None
        # The holder before us may have deleted the file between our open and our lock.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = _read_info(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if previous:
            print(
                f"agentmill: taking over a stale lock on {out} (its holder, "
                f"{_holder_text(previous)}, is gone)",
                file=sys.stderr, flush=True,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_me()) + "\n").encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held: a waiting opener sees another inode and retries
        os.close(fd)


def _alive_here(info: dict[str, Any]) -> bool | None:
    """Whether the holder is still running: known only for a holder on this host."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return None
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _object_store_lock(out: storage.RunPath) -> Iterator[None]:
    path = out / LOCK
    if storage.exists(path):
        info = _read_info(storage.read_text(path))
        if _alive_here(info) is not False:
            raise RunLocked(
                f"--out {out} is in use by another run: {_holder_text(info)}, lock {path}. On "
                "an object store a killed run's lock stays behind: if no run is using the "
                "folder, delete that object and run again"
            )
        print(f"agentmill: taking over a stale lock on {out} ({_holder_text(info)} is gone)",
              file=sys.stderr, flush=True)
    mine = _me()
    storage.write_text(path, json.dumps(mine) + "\n")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if _read_info(storage.read_text(path)).get("pid") == mine["pid"]:
                storage.remove_tree(path)
