"""Loading a tau-bench-like domain: policy text, tools, an initial world and tasks with outcomes.

A domain folder holds

- `policy.md`: the rules the agent must follow (required),
- `tools.json`: the tools, in any form `toolspecs.load` reads (required),
- `world.json`: the initial world, collections of records keyed by id (optional),
- `tasks.json` (a list) or `tasks.jsonl`: each task's `goal`, `user_knows`, `user_withholds`,
  `difficulty`, `rubric`, optional `initial_state` (path -> value, applied on top of the world)
  and `expected_outcome` (`state`: path -> value at the end; `facts`: what the agent must say),
- `domain.json`: optional `name`, `domain` and `system_prompt` of the agent.

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

from schemas.records import AgentSpec, Failure, Outcome, Rubric, Task, ToolSpec
from simulators.world import set_path
from toolspecs.load import load_file
from toolspecs.task_gate import criterion_problem, goal_problem, task_problems

STAGE = "load_domain"
TASK_FIELDS = {
    "id", "goal", "user_knows", "user_withholds", "difficulty", "rubric", "initial_state",
    "expected_outcome",
}


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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DomainError(f"{path}: cannot read: {exc}") from exc


def _task_entries(folder: Path) -> tuple[Path, list[Any]]:
    listed, lines = folder / "tasks.json", folder / "tasks.jsonl"
    if listed.exists():
        entries = _read_json(listed)
        if not isinstance(entries, list):
            raise DomainError(f"{listed}: must be a JSON list of tasks")
        return listed, entries
    if lines.exists():
        try:
            text = lines.read_text(encoding="utf-8")
            return lines, [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DomainError(f"{lines}: cannot read: {exc}") from exc
    raise DomainError(f"{folder}: no tasks.json or tasks.jsonl")


def load_domain(path: str | Path) -> Domain:
    """The domain in folder `path`; raises DomainError when the folder itself is unusable."""
    folder = Path(path)
    if not folder.is_dir():
        raise DomainError(f"{folder}: not a domain folder")
    policy_file = folder / "policy.md"
    if not policy_file.exists():
        raise DomainError(f"{policy_file}: a domain needs its policy text")
    policy = policy_file.read_text(encoding="utf-8").strip()
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
    tasks = []
    for index, entry in enumerate(entries):
        result = _task(entry, index, str(tasks_file), agent, world, names)
        (tasks if isinstance(result, Task) else failures).append(result)  # type: ignore[arg-type]
    return Domain(agent=agent, tasks=tasks, world=world, failures=failures)


def _task(
    entry: Any, index: int, file: str, agent: AgentSpec, world: dict[str, Any], names: set[str]
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
    try:
        rubric = Rubric.model_validate(entry.get("rubric"))
        outcome = Outcome.model_validate(entry.get("expected_outcome") or {})
        task = Task(
            id=str(entry.get("id") or ""),
            agent_id=agent.id,
            goal=entry.get("goal"),
            user_knows=entry.get("user_knows") or [],
            user_withholds=entry.get("user_withholds") or [],
            difficulty=entry.get("difficulty", "medium"),
            rubric=rubric,
            initial_state=state,
            expected_outcome=outcome,
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
