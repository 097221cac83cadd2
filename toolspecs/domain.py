"""Loading a tau-bench-like domain: policy text, tools, an initial world and tasks with outcomes.

A domain folder holds

- `policy.md`: the rules the agent must follow (required),
- `tools.json`: the tools, in any form `toolspecs.load` reads (required),
- `world.json`: the initial world, collections of records keyed by id (optional),
- `tasks.json` (a list) or `tasks.jsonl`: each task's `goal`, `user_knows`, `user_withholds`,
  `difficulty`, `rubric`, optional `initial_state` (path -> value, applied on top of the world)
  and `expected_outcome` (`state`: path -> value at the end; `facts`: what the agent must say),
- `domain.json`: optional `name`, `domain` and `system_prompt` of the agent, and
  `workspace_tools`: names of real file and code tools (`simulators.workspace_tools`) the agent
  gets beside `tools.json`'s simulated ones.

A task may bring a `workspace`: a folder of the domain (`"workspace": "repos/stack"`) whose
`files/` are the agent's initial files and whose `hidden/` holds pytest files the agent never
sees, with an optional `checks.json` (`required_points`, `min_headings`, `emails`); or an
object with `dir` and/or those fields inline (`files`, `hidden_tests`, ...).

One agent plays every task. A task that cannot be used becomes a `Failure` naming the file, the
task's index and the field; the rest of the domain still loads.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.records import AgentSpec, Failure, Outcome, Rubric, Task, ToolSpec, WorkspaceSpec
from simulators.workspace_tools import workspace_tool_specs
from simulators.world import set_path
from toolspecs.load import InputError, load_file, loads_json, read_input
from toolspecs.task_gate import criterion_problem, goal_problem, task_problems

STAGE = "load_domain"
TASK_FIELDS = {
    "id", "goal", "user_knows", "user_withholds", "difficulty", "rubric", "initial_state",
    "expected_outcome", "workspace",
}
MAX_WORKSPACE_FILE = 1_000_000


class DomainError(ValueError):
    """A domain folder that cannot be used at all; names the file."""


@dataclass
class Domain:
    """What a domain folder holds, ready for the episode stage."""

    agent: AgentSpec
    tasks: list[Task]
    world: dict[str, Any]
    failures: list[Failure] = field(default_factory=list)

    @property
    def tools(self) -> list[ToolSpec]:
        return self.agent.tools


def _read_json(path: Path) -> Any:
    """A domain file's JSON: a regular file of bounded size, standard JSON only."""
    try:
        return loads_json(read_input(path))
    except InputError as exc:
        raise DomainError(f"cannot read: {exc}" if str(path) in str(exc) else
                          f"{path}: cannot read: {exc}") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DomainError(f"{path}: cannot read: {exc or 'nested too deeply'}") from exc


def _task_entries(folder: Path) -> tuple[Path, list[Any]]:
    listed, lines = folder / "tasks.json", folder / "tasks.jsonl"
    if listed.exists():
        entries = _read_json(listed)
        if not isinstance(entries, list):
            raise DomainError(f"{listed}: must be a JSON list of tasks")
        return listed, entries
    if lines.exists():
        try:
            text = read_input(lines)
            return lines, [loads_json(line) for line in text.splitlines() if line.strip()]
        except InputError as exc:
            raise DomainError(f"cannot read: {exc}" if str(lines) in str(exc) else
                              f"{lines}: cannot read: {exc}") from exc
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DomainError(f"{lines}: cannot read: {exc or 'nested too deeply'}") from exc
    raise DomainError(f"{folder}: no tasks.json or tasks.jsonl")


def load_domain(path: str | Path) -> Domain:
    """The domain in folder `path`; raises DomainError when the folder itself is unusable."""
    folder = Path(path)
    if not folder.is_dir():
        raise DomainError(f"{folder}: not a domain folder")
    policy_file = folder / "policy.md"
    if not policy_file.exists():
        raise DomainError(f"{policy_file}: a domain needs its policy text")
    try:
        policy = read_input(policy_file).strip()
    except InputError as exc:
        raise DomainError(f"cannot read: {exc}") from exc
    meta = _read_json(folder / "domain.json") if (folder / "domain.json").exists() else {}
    if not isinstance(meta, dict):
        raise DomainError(f"{folder / 'domain.json'}: must be a JSON object")
    name = str(meta.get("name") or folder.name)
    domain_name = str(meta.get("domain") or folder.name)
    tools_file = folder / "tools.json"
    failures: list[Failure] = []
    tools: list[ToolSpec] = []
    for item in load_file(tools_file):
        if isinstance(item, Failure):
            failures.append(item)
        else:
            tools.append(item.model_copy(update={"domain": domain_name}))
    extra = meta.get("workspace_tools") or []
    if not isinstance(extra, list):
        raise DomainError(f"{folder / 'domain.json'}: workspace_tools must be a list of names")
    try:
        tools += workspace_tool_specs([str(name) for name in extra], domain_name)
    except KeyError as exc:
        raise DomainError(f"{folder / 'domain.json'}: workspace_tools: {exc.args[0]}") from exc
    if not tools:
        raise DomainError(f"{tools_file}: no usable tool ({len(failures)} invalid)")
    world = _read_json(folder / "world.json") if (folder / "world.json").exists() else {}
    if not isinstance(world, dict):
        raise DomainError(f"{folder / 'world.json'}: must be a JSON object")
    system_prompt = str(
        meta.get("system_prompt")
        or f"You are {name}, an assistant for {domain_name}. Use the tools to look things up "
        "and act for the user; ask for missing details; never invent results."
    )
    agent = AgentSpec(
        name=name, domain=domain_name, system_prompt=system_prompt,
        tool_ids=[t.id for t in tools], tools=tools, policy=policy,
    )
    tasks_file, entries = _task_entries(folder)
    names = {t.name for t in tools}
    tasks: list[Task] = []
    first: dict[str, int] = {}
    for index, entry in enumerate(entries):
        result = _task(entry, index, str(tasks_file), agent, world, names, folder)
        if isinstance(result, Task) and result.id in first:  # an id the file gives twice
            result = Failure(
                stage=STAGE, input_id=f"{tasks_file}#{index}", error_type="DuplicateTaskId",
                error=f"{tasks_file}: task {index} at /{index}/id: id {result.id!r} is already "
                f"task {first[result.id]}'s; every task needs its own",
                source=str(tasks_file),
            )
        if isinstance(result, Task):
            first[result.id] = index
            tasks.append(result)
        else:
            failures.append(result)
    return Domain(agent=agent, tasks=tasks, world=world, failures=failures)


def _read_tree(root: Path) -> dict[str, str]:
    """Every file under `root` as path -> text; errors name the file."""
    files: dict[str, str] = {}
    if not root.is_dir():
        return files
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(root).as_posix()
        if "__pycache__" in relative:
            continue
        if path.is_symlink():
            raise ValueError(f"{path}: workspace files may not be symbolic links")
        if path.stat().st_size > MAX_WORKSPACE_FILE:
            raise ValueError(f"{path}: larger than {MAX_WORKSPACE_FILE} bytes")
        try:
            files[relative] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    return files


def _workspace(value: Any, folder: Path) -> WorkspaceSpec:
    """A task's `workspace` entry (a folder name or an object) as a WorkspaceSpec."""
    body = {"dir": value} if isinstance(value, str) else value
    if not isinstance(body, dict):
        raise ValueError("must be a folder of the domain or an object")
    body = dict(body)
    merged: dict[str, Any] = {}
    where = body.pop("dir", None)
    if where is not None:
        root = (folder / str(where)).resolve()
        if not root.is_relative_to(folder.resolve()) or not root.is_dir():
            raise ValueError(f"{where!r} is not a folder inside {folder}")
        merged["files"] = _read_tree(root / "files")
        merged["hidden_tests"] = _read_tree(root / "hidden")
        checks = root / "checks.json"
        if checks.exists():
            loaded = json.loads(checks.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise ValueError(f"{checks}: must be a JSON object")
            merged.update(loaded)
    for key, item in body.items():
        if isinstance(item, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **item}
        else:
            merged[key] = item
    return WorkspaceSpec.model_validate(merged)


def _task(
    entry: Any, index: int, file: str, agent: AgentSpec, world: dict[str, Any], names: set[str],
    folder: Path,
) -> Task | Failure:
    where = f"{file}: task {index}"

    def fail(pointer: str, message: str, error_type: str = "InvalidTask") -> Failure:
        return Failure(
            stage=STAGE, input_id=f"{file}#{index}", error_type=error_type,
            error=f"{where} at /{index}{pointer}: {message}", source=file,
        )

    if not isinstance(entry, dict):
        return fail("", "a task must be a JSON object")
    unknown = sorted(set(entry) - TASK_FIELDS)
    if unknown:
        return fail(f"/{unknown[0]}", f"unknown field (expected one of {sorted(TASK_FIELDS)})")
    overrides = entry.get("initial_state") or {}
    if not isinstance(overrides, dict):
        return fail("/initial_state", "must be an object of path -> value")
    state = copy.deepcopy(world)
    for path, value in overrides.items():
        set_path(state, path, value)
    workspace = None
    if entry.get("workspace") is not None:
        try:
            workspace = _workspace(entry["workspace"], folder)
        except ValidationError as exc:
            error = exc.errors()[0]
            pointer = "".join(f"/{part}" for part in error["loc"])
            return fail(f"/workspace{pointer}", error["msg"])
        except (OSError, ValueError) as exc:
            return fail("/workspace", str(exc))
    try:
        rubric = Rubric.model_validate(entry.get("rubric"))
        outcome = Outcome.model_validate(entry.get("expected_outcome") or {})
        task = Task(
            id=str(entry.get("id") or ""),
            agent_id=agent.id,
            slot=index,
            goal=entry.get("goal"),
            user_knows=entry.get("user_knows") or [],
            user_withholds=entry.get("user_withholds") or [],
            difficulty=entry.get("difficulty", "medium"),
            rubric=rubric,
            initial_state=state,
            expected_outcome=outcome,
            workspace=workspace,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        pointer = "".join(f"/{part}" for part in error["loc"])
        prefix = "/rubric" if exc.title == "Rubric" else (
            "/expected_outcome" if exc.title == "Outcome" else ""
        )
        return fail(f"{prefix}{pointer}", error["msg"])
    for position, tool in enumerate(task.rubric.expected_tools):
        if tool not in names:
            return fail(f"/rubric/expected_tools/{position}", f"{tool!r} is not a domain tool")
    if goal_problem(task.goal):
        return fail("/goal", str(goal_problem(task.goal)), "TaskRejected")
    for position, criterion in enumerate(task.rubric.success_criteria):
        if criterion_problem(criterion):
            return fail(f"/rubric/success_criteria/{position}", str(criterion_problem(criterion)),
                        "TaskRejected")
    problems = task_problems(task, agent)
    if problems:
        return fail("/expected_outcome/state", problems[0], "TaskRejected")
    return task
