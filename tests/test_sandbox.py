"""The sandbox holds: code that tries to get out is stopped, and the error that stopped it is named.

Every attempt runs through the workspace tools, as an agent's call would, and gets a tool
answer whose `error.type` names what happened; the next call still works. No test sends a
packet off this machine: the "public" address is TEST-NET-1 (192.0.2.1, never routed), and the
sandbox's network namespace has no interface but its own loopback, which a test checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from schemas.records import FunctionCall, ToolCall, WorkspaceSpec
from simulators import sandbox
from simulators.llm.base import Sampling
from simulators.sandbox import Limits, SandboxUnavailable
from simulators.tool_simulator import ToolSimulator
from simulators.workspace import Workspace
from simulators.workspace_tools import WORKSPACE_TOOLS, WorkspaceTools
from tests.helpers import role_model

LIMITS = Limits(cpu_s=2, wall_s=10, memory_mb=256, processes=32, output_bytes=100_000)
REPO = Path(__file__).resolve().parents[1]


def tools(files: dict[str, str] | None = None, limits: Limits = LIMITS) -> WorkspaceTools:
    simulator = ToolSimulator(role_model({}), list(WORKSPACE_TOOLS.values()), {}, Sampling())
    return WorkspaceTools(simulator, WorkspaceSpec(files=files or {}), limits)


def call(answerer: WorkspaceTools, name: str, **arguments: Any) -> dict[str, Any]:
    message = asyncio.run(
        answerer.answer(
            ToolCall(id="c1", function=FunctionCall(name=name, arguments=json.dumps(arguments))),
            {},
        )
    )
    return json.loads(message.content or "{}")


def run_code(answerer: WorkspaceTools, code: str) -> dict[str, Any]:
    return call(answerer, "run_python", code=code)


@pytest.fixture
def ws():
    answerer = tools({"notes.txt": "hello\n"})
    yield answerer
    answerer.close()


def still_works(answerer: WorkspaceTools) -> None:
    """After an attempt, the episode goes on: the next call is answered normally."""
    answer = run_code(answerer, "print(open('notes.txt').read().strip())")
    assert answer["exit_code"] == 0 and answer["stdout"] == "hello\n", answer


def test_a_trivial_run_works_unprivileged_with_an_empty_environment(ws) -> None:
    answer = run_code(ws, "import os, sys; print(os.getuid(), os.getcwd(), sorted(os.environ))")
    uid, cwd, env = answer["stdout"].split(" ", 2)
    assert answer["exit_code"] == 0 and "error" not in answer
    assert int(uid) == ws.workspace.uid
    if os.geteuid() == 0:  # unprivileged, the code runs as the caller's uid (its user namespace)
        assert int(uid) >= sandbox.UID_RANGE[0]
    assert cwd == "/workspace"
    assert env.strip() == str(sorted(["HOME", "LANG", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE",
                                      "PYTHONHASHSEED"]))


def test_host_files_are_not_there(ws) -> None:
    home_file = Path.home() / ".bashrc"
    for path in ("/etc/passwd", str(REPO / "README.md"), str(REPO / "pyproject.toml"),
                 str(home_file), "/etc/shadow"):
        answer = run_code(ws, f"print(open({path!r}).read())")
        assert answer["error"]["type"] == "file_not_found", (path, answer)
    listing = run_code(ws, "import os; print(' '.join(sorted(os.listdir('/'))))")
    top = listing["stdout"].split()
    assert "etc" not in top and "home" not in top
    assert str(REPO).split("/")[1] not in top  # the repository's top folder
    still_works(ws)


def test_writing_outside_the_workspace_fails(ws) -> None:
    for path in ("/evil.txt", "/opt/agentmill/lib/evil.py", "/usr/lib/evil"):
        answer = run_code(ws, f"open({path!r}, 'w').write('x')")
        assert answer["error"]["type"] in ("read_only_filesystem", "permission_denied"), answer
    answer = call(ws, "write_file", path="../escape.txt", content="x")
    assert answer["error"]["type"] == "invalid_path"
    assert not (ws.workspace.root.parent / "escape.txt").exists()
    answer = call(ws, "write_file", path="/etc/escape.txt", content="x")
    assert answer["error"]["type"] == "invalid_path"
    still_works(ws)


def test_symlinks_do_not_escape(ws, tmp_path: Path) -> None:
    secret = tmp_path / "host_secret.txt"
    secret.write_text("HOST-ONLY")
    # Inside, a link to a host path points at nothing: the host is not mounted.
    code = f"import os; os.symlink({str(secret)!r}, 'leak'); print(open('leak').read())"
    answer = run_code(ws, code)
    assert answer["error"]["type"] == "file_not_found"
    # Outside, the host's own tools refuse to follow what the sandbox left behind.
    run_code(ws, f"import os; os.symlink({str(tmp_path)!r}, 'outdir')")
    assert call(ws, "read_file", path="leak")["error"]["type"] == "symlink_refused"
    answer = call(ws, "write_file", path="outdir/planted.txt", content="x")
    assert answer["error"]["type"] == "symlink_refused"
    assert not (tmp_path / "planted.txt").exists()
    assert call(ws, "send_email", to="a@b.c", subject="s", body="b",
                attachments=["leak"])["error"]["type"] == "symlink_refused"
    final = ws.state["workspace"]["files"]
    assert final["leak"] == {"symlink": str(secret)}
    assert "HOST-ONLY" not in json.dumps(ws.state)
    still_works(ws)


def test_fork_bomb_is_stopped_by_the_process_limit(ws) -> None:
    answer = run_code(ws, "import os\nwhile True:\n    os.fork()")
    assert answer["error"]["type"] == "process_limit", answer
    still_works(ws)


def test_infinite_loop_is_stopped_by_the_cpu_limit(ws) -> None:
    answer = run_code(ws, "while True:\n    pass")
    assert answer["error"]["type"] == "cpu_limit", answer
    still_works(ws)


def test_sleeping_forever_is_stopped_by_the_wall_limit() -> None:
    answerer = tools({"notes.txt": "hello\n"}, Limits(wall_s=1.5))
    try:
        answer = run_code(answerer, "import time\ntime.sleep(60)")
        assert answer["error"]["type"] == "wall_timeout", answer
        still_works(answerer)
    finally:
        answerer.close()


def test_a_gigabyte_allocation_fails_with_memory_limit(ws) -> None:
    answer = run_code(ws, "block = bytearray(1 << 30)")
    assert answer["error"]["type"] == "memory_limit", answer
    still_works(ws)


def test_100_mb_of_output_is_cut_and_stopped(ws) -> None:
    answer = run_code(ws, "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))")
    assert answer["error"]["type"] == "output_limit", answer
    assert len(answer["stdout"]) < 10_000  # the tool answer shows a tail, not megabytes
    still_works(ws)


def test_no_network_neither_loopback_services_nor_outside(ws) -> None:
    with socket.socket() as server:  # a real service on the host's loopback
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        answer = run_code(
            ws, f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
        )
    assert answer["error"]["type"] == "connection_refused", answer
    answer = run_code(ws, "import socket; socket.create_connection(('192.0.2.1', 80), timeout=3)")
    assert answer["error"]["type"] == "network_unreachable", answer
    interfaces = run_code(ws, "print(open('/proc/net/dev').read())")["stdout"]
    names = [line.split(":")[0].strip() for line in interfaces.splitlines()[2:] if line.strip()]
    assert names == ["lo"]  # nothing to send a packet through but the sandbox's own loopback
    still_works(ws)


def test_the_parents_secrets_do_not_reach_the_code(ws, monkeypatch) -> None:
    monkeypatch.setenv("AGENTMILL_PLANTED_SECRET", "sk-planted-0123456789")
    code = (
        "import os\nprint(dict(os.environ))\n"
        "for pid in ['self', *os.listdir('/proc')]:\n"
        "    try:\n        print(open(f'/proc/{pid}/environ').read())\n"
        "    except (OSError, NotADirectoryError):\n        pass\n"
    )
    answer = run_code(ws, code)
    assert answer["exit_code"] == 0, answer
    assert "sk-planted" not in json.dumps(answer)
    assert "AGENTMILL_PLANTED_SECRET" not in json.dumps(answer)


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if name.isdigit() and marker.encode() in cmdline:
            found.append(int(name))
    return found


def test_background_processes_are_killed_and_named(ws) -> None:
    marker = "agentmill-bg-marker-7731"
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', {marker!r}])\n"
        "print('started')"
    )
    answer = run_code(ws, code)
    assert answer["error"]["type"] == "background_process", answer
    assert answer["stdout"] == "started\n"
    assert _host_processes_with(marker) == []
    still_works(ws)


def test_the_workspace_quota_removes_what_overflows() -> None:
    answerer = tools({}, Limits(file_mb=1, workspace_mb=2, wall_s=10))
    try:
        answer = run_code(answerer, "open('big.bin', 'wb').write(b'x' * (2 << 20))")
        assert answer["error"]["type"] == "file_size_limit", answer
        code = "for i in range(3):\n    open(f'part{i}.bin', 'wb').write(b'x' * 900_000)"
        answer = run_code(answerer, code)
        assert answer["error"]["type"] == "workspace_limit", answer
        assert sum(info.st_size for _, info in answerer.workspace.entries()) <= 2 << 20
    finally:
        answerer.close()


def test_the_workspace_is_removed_afterwards() -> None:
    workspace = Workspace({"a.py": "print(1)"})
    root = workspace.root
    assert (root / "a.py").exists() and os.stat(root).st_uid == workspace.uid
    asyncio.run(workspace.run(mode="code", code="open('made.txt', 'w').write('x')"))
    workspace.close()
    assert not root.exists()


def test_no_sandbox_is_a_clear_error_never_unconfined(monkeypatch) -> None:
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    problem = sandbox._probe.__wrapped__()
    assert problem and "bubblewrap" in problem and "install" in problem
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        sandbox.bwrap_argv(Path("/tmp"), {}, None)


def test_many_sandboxes_at_once_all_finish() -> None:
    async def many() -> list[Any]:
        workspaces = [Workspace({"n.txt": str(i)}) for i in range(8)]
        try:
            return await asyncio.gather(
                *(w.run(mode="code", code="print(open('n.txt').read())") for w in workspaces)
            )
        finally:
            for w in workspaces:
                w.close()

    results = asyncio.run(many())
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(8)]
    assert all(r.ok for r in results)
