"""Workspace tools: calls that act on a task's real files, in a sandbox, beside simulated ones.

A domain names the workspace tools its agent gets (`domain.json`: `"workspace_tools": [...]`);
their specs are defined here once. In an episode whose task brings a workspace,
`WorkspaceTools` answers those calls for real (files, Python, pytest, a CSV summary, an outbox)
and hands every other call to the tool simulator, so simulated and real tools mix in one
episode. Failures come back as the agent would see them from a real API: a JSON body whose
`error.type` names what happened (`file_not_found`, `wall_timeout`, `memory_limit`, ...).

At the end, `finish()` takes the workspace's snapshot for `final_state["workspace"]`, runs the
task's hidden tests over the final files in a fresh sandbox run (the tests are mounted
read-only; the agent never saw them) and records each test's outcome there, then removes the
folder.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from schemas.records import JsonObject, Message, ToolCall, ToolSpec, WorkspaceSpec, canonical_json
from simulators import sandbox
from simulators.ask import Usage, schema_errors
from simulators.sandbox import HIDDEN_DIR, Limits, RunResult
from simulators.tool_simulator import ToolSimulator, api_error
from simulators.workspace import Workspace, WorkspaceError

OUTPUT_SHOWN = 4_000
"""Characters of stdout/stderr a tool answer shows (the tail: where errors are)."""

_PATH = {"type": "string", "description": "A path relative to the workspace root."}


def _spec(name: str, description: str, properties: JsonObject, required: list[str],
          side_effect: str = "read", returns: JsonObject | None = None) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=description,
        parameters={
            "type": "object", "properties": properties, "required": required,
            "additionalProperties": False,
        },
        returns=returns or {"type": "object"},
        domain="workspace",
        side_effect=side_effect,  # type: ignore[arg-type]
    )


WORKSPACE_TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "list_files",
            "List the files in the workspace (or in one folder of it) with their sizes.",
            {"folder": {"type": "string", "description": "A folder; empty: everything."}},
            [],
        ),
        _spec("read_file", "Read a text file from the workspace.", {"path": _PATH}, ["path"]),
        _spec(
            "write_file",
            "Create or overwrite a text file in the workspace with the given content.",
            {"path": _PATH, "content": {"type": "string"}},
            ["path", "content"],
            "write",
        ),
        _spec(
            "run_python",
            "Run Python 3 in a sandbox over the workspace: either `code`, or the workspace "
            "script at `path` with `args`. No network; time and memory are limited. Returns "
            "the exit code, stdout and stderr.",
            {
                "code": {"type": "string", "description": "Python source to run."},
                "path": {"type": "string", "description": "A .py file in the workspace."},
                "args": {"type": "array", "items": {"type": "string"}, "maxItems": 16},
            },
            [],
            "write",
        ),
        _spec(
            "run_tests",
            "Run the workspace's tests with pytest in a sandbox; returns how many passed and "
            "failed and pytest's report.",
            {
                "path": {"type": "string", "description": "Test file or folder (default: all)."},
                "keyword": {"type": "string", "description": "Only tests matching this (-k)."},
            },
            [],
        ),
        _spec(
            "summarize_table",
            "Compute over a CSV file in the workspace: the sum, mean, min, max or count of a "
            "numeric column, for all rows or per value of a grouping column.",
            {
                "path": _PATH,
                "column": {"type": "string", "description": "The numeric column."},
                "op": {"enum": ["sum", "mean", "min", "max", "count"]},
                "group_by": {"type": "string", "description": "Optional column to group by."},
            },
            ["path", "column", "op"],
        ),
        _spec(
            "send_email",
            "Send an email; each attachment must be a file in the workspace.",
            {
                "to": {"type": "string", "description": "Recipient address."},
                "subject": {"type": "string"},
                "body": {"type": "string"},
                "attachments": {"type": "array", "items": _PATH, "maxItems": 8},
            },
            ["to", "subject", "body"],
            "write",
        ),
    )
}


def workspace_tool_specs(names: list[str], domain: str) -> list[ToolSpec]:
    """The specs of the named workspace tools, in `domain`; unknown names raise KeyError."""
    unknown = [n for n in names if n not in WORKSPACE_TOOLS]
    if unknown:
        raise KeyError(f"unknown workspace tools {unknown}; known: {sorted(WORKSPACE_TOOLS)}")
    return [WORKSPACE_TOOLS[n].model_copy(update={"domain": domain}) for n in names]


def is_workspace_tool(tool: ToolSpec) -> bool:
    """True for a spec that is one of ours (same name and arguments), not a look-alike."""
    ours = WORKSPACE_TOOLS.get(tool.name)
    return ours is not None and ours.parameters == tool.parameters


def _tail(text: str) -> str:
    if len(text) <= OUTPUT_SHOWN:
        return text
    return f"[... {len(text) - OUTPUT_SHOWN} characters cut ...]\n" + text[-OUTPUT_SHOWN:]


def _run_answer(result: RunResult) -> JsonObject:
    body: JsonObject = {
        "exit_code": result.exit_code,
        "stdout": _tail(result.stdout),
        "stderr": _tail(result.stderr),
    }
    if result.error:
        body["error"] = {"type": result.error, "message": "; ".join(result.notes) or result.error}
    elif result.notes:
        body["notes"] = result.notes
    return body


def _count(outcomes: dict[str, str]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for outcome in outcomes.values():
        key = {"passed": "passed", "failed": "failed", "skipped": "skipped"}.get(outcome, "errors")
        counts[key] += 1
    return counts


def summarize_table(text: str, column: str, op: str, group_by: str | None) -> JsonObject:
    """`op` over `column` of a CSV text, overall or per `group_by` value."""
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    for name in [column, *([group_by] if group_by else [])]:
        if name not in fields:
            raise WorkspaceError("unknown_column", f"no column {name!r}; columns: {fields}")
    groups: dict[str, list[float]] = {}
    for line, row in enumerate(reader, start=2):
        raw = (row.get(column) or "").replace(",", "").strip()
        try:
            value = float(raw)
        except ValueError:
            if op == "count":
                value = math.nan
            else:
                raise WorkspaceError(
                    "not_a_number", f"line {line}: {column} is {raw!r}, not a number"
                ) from None
        groups.setdefault(str(row.get(group_by)) if group_by else "all", []).append(value)

    def compute(values: list[float]) -> float:
        if op == "count":
            return len(values)
        if op == "sum":
            return round(sum(values), 6)
        if op == "mean":
            return round(sum(values) / len(values), 6)
        return min(values) if op == "min" else max(values)

    results = {key: compute(values) for key, values in groups.items() if values}
    if group_by:
        return {"op": op, "column": column, "group_by": group_by, "results": results}
    return {"op": op, "column": column, "result": results.get("all", 0)}


def count_hidden_tests(files: dict[str, str]) -> int:
    """Test functions the hidden files define (top level and in Test classes)."""
    total = 0
    for text in files.values():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                total += node.name.startswith("test")
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                total += sum(
                    isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and item.name.startswith("test")
                    for item in node.body
                )
    return total


async def run_hidden_tests(workspace: Workspace, hidden: dict[str, str]) -> JsonObject:
    """Run `hidden` (path -> pytest file) over the workspace's files; outcomes and counts.

    The tests are mounted read-only outside the workspace and run with no conftest.py and no
    ini file of the workspace, so the agent's files cannot change how they are collected.
    """
    folder = Path(tempfile.mkdtemp(prefix="agentmill-hidden-"))
    try:
        os.chmod(folder, 0o755)
        for path, text in hidden.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(target.parent, 0o755)
            target.write_text(text, encoding="utf-8")
            os.chmod(target, 0o644)
        (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        os.chmod(folder / "pytest.ini", 0o644)
        result = await workspace.run(
            mode="pytest", hidden=folder,
            args=[HIDDEN_DIR, "-q", "-p", "no:cacheprovider", "--noconftest",
                  "-c", f"{HIDDEN_DIR}/pytest.ini", "--rootdir", HIDDEN_DIR],
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    outcomes = {
        name.replace(HIDDEN_DIR + "/", "").replace("opt/agentmill/hidden/", ""): outcome
        for name, outcome in (result.tests or {}).items()
    }
    counts = _count(outcomes)
    total = max(count_hidden_tests(hidden), len(outcomes), 1)
    body: JsonObject = {
        "passed": counts["passed"], "total": total, "outcomes": outcomes,
        "exit_code": result.exit_code,
    }
    if result.error and result.error not in ("exit_code_1",):
        body["error"] = result.error
    if counts["passed"] < total:
        body["report"] = _tail(result.stdout)[-2000:]
    return body


class WorkspaceTools:
    """The episode's tool answerer when its task brings files: real workspace tools, the
    simulator for the rest. `state` is the simulator's world plus `workspace`."""

    def __init__(
        self, simulator: ToolSimulator, spec: WorkspaceSpec, limits: Limits | None = None
    ) -> None:
        self.simulator = simulator
        self.spec = spec
        self.workspace = Workspace(spec.files, limits)
        self.names = {n for n, tool in simulator.tools.items() if is_workspace_tool(tool)}
        self._final: JsonObject | None = None

    @property
    def tools(self) -> dict[str, ToolSpec]:
        return self.simulator.tools

    @property
    def injected(self) -> list[Any]:
        return self.simulator.injected

    @property
    def state(self) -> JsonObject:
        final = self._final if self._final is not None else self.workspace.snapshot()
        return {**self.simulator.state, "workspace": final}

    async def answer(self, call: ToolCall, usage: Usage) -> Message:
        name = call.function.name
        if name not in self.names:
            return await self.simulator.answer(call, usage)
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as exc:
            return self._message(call, api_error(400, "invalid_json", f"arguments: {exc.msg}"))
        errors = schema_errors(self.tools[name].parameters, arguments)
        if errors:
            pointer, _, message = errors[0].partition(": ")
            body = api_error(400, "invalid_arguments", message, param=pointer)
            return self._message(call, body)
        try:
            result = await self._call(name, arguments)
        except WorkspaceError as exc:
            return self._message(call, api_error(exc.code, exc.kind, str(exc)))
        return self._message(call, canonical_json(result))

    async def _call(self, name: str, args: JsonObject) -> JsonObject:
        ws = self.workspace
        if name == "list_files":
            return ws.list(str(args.get("folder") or ""))
        if name == "read_file":
            return ws.read(args["path"])
        if name == "write_file":
            return ws.write(args["path"], args["content"])
        if name == "run_python":
            code, path = args.get("code"), args.get("path")
            if bool(code) == bool(path):
                raise WorkspaceError("invalid_arguments", "give either `code` or `path`")
            if path:
                if not ws.exists(path):
                    raise WorkspaceError("file_not_found", f"no file {path!r}", 404)
                result = await ws.run(mode="script", script=path, args=args.get("args") or [])
            else:
                result = await ws.run(mode="code", code=code, args=args.get("args") or [])
            return _run_answer(result)
        if name == "run_tests":
            pytest_args = ["-q", "-p", "no:cacheprovider", "--color=no"]
            if args.get("keyword"):
                pytest_args += ["-k", str(args["keyword"])]
            if args.get("path"):
                ws.exists(args["path"])  # refuses paths outside the workspace
                pytest_args.append(str(args["path"]))
            result = await ws.run(mode="pytest", args=pytest_args)
            body = _run_answer(result)
            body.update(_count(result.tests or {}))
            if result.error in ("exit_code_1",):  # tests failed: an answer, not an error
                del body["error"]
            elif result.error == "exit_code_5":
                body["error"] = {"type": "no_tests", "message": "pytest collected no tests"}
            return body
        if name == "summarize_table":
            text = ws.read(args["path"], limit=ws.limits.file_mb << 20)["content"]
            return summarize_table(text, args["column"], args["op"], args.get("group_by"))
        if name == "send_email":
            return ws.send_email(
                args["to"], args["subject"], args["body"], list(args.get("attachments") or [])
            )
        raise WorkspaceError("unknown_tool", f"no workspace tool {name!r}", 404)

    async def finish(self) -> None:
        """Snapshot the final files, run the hidden tests over them, remove the workspace."""
        try:
            final = self.workspace.snapshot()
            if self.spec.hidden_tests:
                final["hidden_tests"] = await run_hidden_tests(
                    self.workspace, self.spec.hidden_tests
                )
            self._final = final
        finally:
            self.close()

    def close(self) -> None:
        if self._final is None:
            self._final = {"files": {}, "outbox": [], "closed": True}
        self.workspace.close()

    @staticmethod
    def _message(call: ToolCall, content: str) -> Message:
        return Message(role="tool", tool_call_id=call.id, name=call.function.name, content=content)


def answerer(simulator: ToolSimulator, spec: WorkspaceSpec | None) -> Any:
    """What answers an episode's calls: `simulator`, or a `WorkspaceTools` around it."""
    if spec is None:
        return simulator
    sandbox.require_sandbox()
    return WorkspaceTools(simulator, spec)


async def finish_answerer(answering: Any) -> None:
    """End an episode's answerer: for a workspace, snapshot it and run the hidden tests."""
    if isinstance(answering, WorkspaceTools):
        await answering.finish()


def close_answerer(answering: Any) -> None:
    """Remove an episode's workspace, if it has one (also after a failed episode)."""
    if isinstance(answering, WorkspaceTools):
        answering.close()
