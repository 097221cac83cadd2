"""Run folders that may live on a local disk or behind a URI (`gs://bucket/runs/x`).

Everything outside the Beam graph that touches a run folder (clearing old output, writing the
manifest, the dataset card and its plots, reading Parquet back) goes through these helpers, which
use Beam's `FileSystems` for URIs, so a run on Dataflow writes to Cloud Storage with no local-only
path code. Local folders keep plain `pathlib` behaviour.
"""

from __future__ import annotations

import errno
import posixpath
import re
import shutil
from pathlib import Path

from apache_beam.io.filesystems import FileSystems

_URI = re.compile(r"^[a-zA-Z][-a-zA-Z0-9+.]*://")


def is_uri(path: str | Path) -> bool:
    """True for `scheme://...` locations (gs://, s3://...), False for local paths."""
    return isinstance(path, str) and bool(_URI.match(path))


class Location(str):
    """A URI that joins with `/` and has a `.name`, like a `Path` (which would mangle `gs://`)."""

    def __truediv__(self, part: str) -> Location:
        return Location(FileSystems.join(self.rstrip("/"), str(part)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.rstrip("/"))


RunPath = Path | Location


def run_path(path: str | Path) -> RunPath:
    """`path` as a `Location` when it is a URI, else as a `Path`."""
    if isinstance(path, Location):
        return path
    return Location(str(path).rstrip("/")) if is_uri(str(path)) else Path(path)


def exists(path: str | Path) -> bool:
    return FileSystems.exists(str(path)) if is_uri(str(path)) else Path(path).exists()


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole file, creating local parent folders; URIs go through Beam's filesystems."""
    if is_uri(str(path)):
        with FileSystems.create(str(path), mime_type="application/octet-stream") as handle:
            handle.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_text(path: str | Path) -> str:
    if is_uri(str(path)):
        with FileSystems.open(str(path)) as handle:
            return handle.read().decode("utf-8")
    return Path(path).read_text(encoding="utf-8")


def remove_tree(path: str | Path) -> None:
    """Delete a folder and everything under it (or a single file); missing is fine."""
    if not is_uri(str(path)):
        target = Path(path)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        return
    # Object stores have no folders: delete every object under the prefix.
    prefix = str(path).rstrip("/")
    matched = FileSystems.match([prefix, f"{prefix}/**"])
    paths = sorted({m.path for result in matched for m in result.metadata_list})
    if paths:
        FileSystems.delete(paths)


def list_files(folder: str | Path, pattern: str = "*") -> list[str]:
    """Files directly in `folder` whose names match `pattern` (a glob), sorted."""
    if not is_uri(str(folder)):
        return sorted(str(p) for p in Path(folder).glob(pattern) if p.is_file())
    (result,) = FileSystems.match([f"{str(folder).rstrip('/')}/{pattern}"])
    return sorted(m.path for m in result.metadata_list)


def total_size(folder: str | Path, pattern: str = "*") -> int:
    """Bytes of the files directly in `folder` matching `pattern`; 0 when there are none."""
    if not is_uri(str(folder)):
        return sum(p.stat().st_size for p in Path(folder).glob(pattern) if p.is_file())
    (result,) = FileSystems.match([f"{str(folder).rstrip('/')}/{pattern}"])
    return sum(m.size_in_bytes for m in result.metadata_list)


_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "[Errno 28]", "[Errno 122]")


def disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it wraps, is a full disk or an exceeded quota. Beam re-raises
    a worker's error as a RuntimeError holding only its text, so the text counts too."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if any(text in str(error) for text in _FULL_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False
