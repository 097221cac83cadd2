"""A task's workspace: real files in a fresh folder, changed by the agent, run in a sandbox.

The host reads and writes the files itself (fast, no sandbox needed), but never through a
link: code that ran in the sandbox may have left a symlink to `/etc/shadow` or a FIFO behind, so
every path is resolved component by component without following symlinks, and only regular
files are opened (`O_NOFOLLOW`, `O_NONBLOCK`). No sandbox runs while the host touches the files
(each run's pid namespace is gone when it returns), so nothing can swap a path in between.

`snapshot()` is what the trajectory's `final_state` shows: every file's path, size and SHA-256,
and its text up to a limit, plus the outbox of sent emails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from schemas.records import WORKSPACE_PATH
from simulators import sandbox
from simulators.sandbox import Limits, RunResult

CONTENT_LIMIT = 16_000
"""Characters of a file's text kept in `final_state` (the full text is in its hash)."""
READ_LIMIT = 50_000
LIST_LIMIT = 500


class WorkspaceError(Exception):
    """A workspace request that cannot be served; `kind` names it for the tool answer."""

    def __init__(self, kind: str, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Workspace:
    """One episode's files in a temporary folder owned by a fresh unprivileged uid (as root;
    unprivileged, the caller's own uid, which is the only one its user namespace can map)."""

    def __init__(
        self, files: dict[str, str], limits: Limits | None = None, base: str | None = None
    ) -> None:
        self.limits = limits or Limits()
        self.uid = sandbox.new_uid() if os.geteuid() == 0 else os.geteuid()
        self.root = Path(tempfile.mkdtemp(prefix="agentmill-ws-", dir=base))
        self._chown(self.root)
        self.outbox: list[dict[str, Any]] = []
        self.runs = 0
        for path, text in files.items():
            self.write(path, text)

    # -- paths -------------------------------------------------------------------------------

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.uid, follow_symlinks=False)

    def _checked(self, path: str) -> Path:
        """`path` inside the workspace; refuses absolute paths, `..` and symlinks on the way."""
        clean = path.strip().removeprefix("./").removeprefix(sandbox.SANDBOX_WORKSPACE + "/")
        if not clean or not WORKSPACE_PATH.match(clean) or "//" in clean:
            raise WorkspaceError("invalid_path", f"{path!r} is not a path inside the workspace")
        node = self.root
        for part in Path(clean).parts:
            node = node / part
            try:
                mode = os.lstat(node).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                raise WorkspaceError(
                    "symlink_refused", f"{path!r} goes through a symbolic link", 403
                )
        return node

    def _read_bytes(self, path: str, limit: int) -> tuple[bytes, int]:
        target = self._checked(path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise WorkspaceError(
                "file_not_found", f"no file {path!r} in the workspace", 404
            ) from None
        except OSError as exc:
            raise WorkspaceError("unreadable", f"{path!r}: {exc.strerror}", 403) from exc
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise WorkspaceError("is_a_directory", f"{path!r} is a folder; use list_files")
            if not stat.S_ISREG(info.st_mode):
                raise WorkspaceError("not_a_file", f"{path!r} is not a regular file", 403)
            data = b""
            while len(data) < limit:
                chunk = os.read(fd, limit - len(data))
                if not chunk:
                    break
                data += chunk
            return data, info.st_size
        finally:
            os.close(fd)

    # -- what the tools do -------------------------------------------------------------------

    def read(self, path: str, limit: int = READ_LIMIT) -> dict[str, Any]:
        data, size = self._read_bytes(path, limit)
        text = data.decode("utf-8", "replace")
        body: dict[str, Any] = {"path": path, "size": size, "content": text}
        if size > len(data):
            body["truncated"] = True
        return body

    def exists(self, path: str) -> bool:
        try:
            self._read_bytes(path, 0)
        except WorkspaceError:
            return False
        return True

    def write(self, path: str, content: str) -> dict[str, Any]:
        data = content.encode("utf-8")
        if len(data) > self.limits.file_mb << 20:
            raise WorkspaceError("file_too_large", f"{path!r} is over {self.limits.file_mb} MiB")
        target = self._checked(path)
        relative = target.relative_to(self.root)
        node = self.root
        for part in relative.parts[:-1]:
            node = node / part
            if not node.exists():
                node.mkdir()
                self._chown(node)
            elif not node.is_dir():
                raise WorkspaceError("not_a_directory", f"{node.relative_to(self.root)} is a file")
        if target.is_dir():
            raise WorkspaceError("is_a_directory", f"{path!r} is a folder")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self._chown(target)
        return {"path": str(relative), "size": len(data), "sha256": _sha256(data)}

    def entries(self) -> list[tuple[str, os.stat_result]]:
        """(relative path, lstat) of every file, link and special file, folders walked."""
        found: list[tuple[str, os.stat_result]] = []
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                items = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for item in items:
                info = item.stat(follow_symlinks=False)
                relative = str(Path(item.path).relative_to(self.root))
                if stat.S_ISDIR(info.st_mode):
                    if item.name not in ("__pycache__", ".pytest_cache"):
                        stack.append(Path(item.path))
                else:
                    found.append((relative, info))
        return sorted(found)

    def list(self, folder: str = "") -> dict[str, Any]:
        prefix = ""
        if folder.strip() not in ("", ".", "/", sandbox.SANDBOX_WORKSPACE):
            prefix = str(self._checked(folder).relative_to(self.root)) + "/"
        files: list[dict[str, Any]] = []
        for path, info in self.entries():
            if path.startswith(prefix):
                entry: dict[str, Any] = {"path": path, "size": info.st_size}
                if stat.S_ISLNK(info.st_mode):
                    entry["symlink"] = True
                files.append(entry)
        body: dict[str, Any] = {"files": files[:LIST_LIMIT], "count": len(files)}
        if len(files) > LIST_LIMIT:
            body["truncated"] = True
        return body

    def send_email(
        self, to: str, subject: str, body: str, attachments: list[str]
    ) -> dict[str, Any]:
        """Record an email in the outbox; every attachment must be a file in the workspace."""
        attached = []
        for path in attachments:
            data, size = self._read_bytes(path, self.limits.file_mb << 20)
            attached.append({"path": path, "size": size, "sha256": _sha256(data)})
        message_id = f"MSG-{len(self.outbox) + 1:04d}"
        self.outbox.append(
            {"message_id": message_id, "to": to, "subject": subject, "body": body,
             "attachments": attached}
        )
        return {"message_id": message_id, "status": "sent", "attachments": len(attached)}

    # -- running code ------------------------------------------------------------------------

    async def run(self, **kwargs: Any) -> RunResult:
        """A sandboxed run over these files (see `sandbox.run`), then the workspace quota."""
        self.runs += 1
        result = await sandbox.run(self.root, uid=self.uid, limits=self.limits, **kwargs)
        removed = self.enforce_quota()
        if removed:
            result.error = result.error or "workspace_limit"
            result.notes.append(
                f"the workspace went over {self.limits.workspace_mb} MiB or "
                f"{self.limits.workspace_files} files; removed: {', '.join(removed[:10])}"
            )
        return result

    def enforce_quota(self) -> list[str]:
        """Remove the largest files until the workspace is within its limits; their paths."""
        entries = self.entries()
        total = sum(info.st_size for _, info in entries)
        budget = self.limits.workspace_mb << 20
        removed: list[str] = []
        by_size = sorted(entries, key=lambda e: -e[1].st_size)
        while by_size and (total > budget or len(by_size) > self.limits.workspace_files):
            path, info = by_size.pop(0)
            (self.root / path).unlink(missing_ok=True)
            total -= info.st_size
            removed.append(path)
        return removed

    # -- the end -----------------------------------------------------------------------------

    def snapshot(self, content_limit: int = CONTENT_LIMIT) -> dict[str, Any]:
        """Every file's path, size, hash and text (up to `content_limit`), and the outbox."""
        files: dict[str, Any] = {}
        for path, info in self.entries():
            if stat.S_ISLNK(info.st_mode):
                files[path] = {"symlink": os.readlink(self.root / path)}
                continue
            if not stat.S_ISREG(info.st_mode):
                files[path] = {"special": True}
                continue
            data, size = self._read_bytes(path, self.limits.file_mb << 20)
            entry: dict[str, Any] = {"size": size, "sha256": _sha256(data)}
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                entry["binary"] = True
            else:
                entry["content"] = text[:content_limit]
                if len(text) > content_limit:
                    entry["truncated"] = True
            files[path] = entry
        return {"files": files, "outbox": list(self.outbox), "runs": self.runs}

    def close(self) -> None:
        """Remove the folder and everything the sandbox left in it."""
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
