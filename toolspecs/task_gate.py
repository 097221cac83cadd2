"""The gate a task passes before any episode plays it.

A task writer (a model, or a person editing `tasks.json`) can produce junk that still fits the
task schema: a goal `"abt-2293"`, a criterion `","` or `"]}In order to..."`, a tool the agent does
not have, an expected change to a path the world does not hold. An episode on such a task
teaches nothing and its verdict means nothing, so it becomes a `Failure` naming the rule:

- `goal_not_a_request`: the goal is a sentence a user would say (three words or more, not an
  id or a slug).
- `criterion_not_checkable`: every success criterion is a sentence a judge can check (starts
  with a word, two words or more, no JSON debris).
- `unknown_expected_tool`: every expected tool is one of the agent's tools.
- `outcome_path_missing`: every path of the expected end state exists in the initial world.
"""

from __future__ import annotations

import re

from schemas.records import AgentSpec, JsonObject, Task
from simulators.world import get_path

WORD = re.compile(r"[^\W\d_]{2,}")
"""A word: two letters or more (any script)."""
SLUG = re.compile(r"^[\w.:#/-]+$")
JSON_DEBRIS = re.compile(r"[\]}][\]},]|\{\s*\"|\"\s*:|^[\W_]")
MIN_GOAL_WORDS = 3
MIN_CRITERION_WORDS = 2


class TaskRejected(ValueError):
    """A task failed the gate; the message names the rule and the offending value."""


def goal_problem(goal: str) -> str | None:
    text = goal.strip()
    if SLUG.match(text) or len(WORD.findall(text)) < MIN_GOAL_WORDS:
        return f"goal_not_a_request: goal {text[:80]!r} is not a request a user would make"
    return None


def criterion_problem(criterion: str) -> str | None:
    text = criterion.strip()
    if JSON_DEBRIS.search(text) or len(WORD.findall(text)) < MIN_CRITERION_WORDS:
        return f"criterion_not_checkable: success criterion {text[:80]!r} is not a checkable " \
            "sentence"
    return None


def text_problems(goal: str, criteria: list[str]) -> list[str]:
    """The rules a task's words break (goal and criteria), for a writer to retry on."""
    problems = [goal_problem(goal), *(criterion_problem(c) for c in criteria)]
    return [p for p in problems if p]


def task_problems(task: Task, agent: AgentSpec) -> list[str]:
    """Every rule `task` breaks for `agent`; empty: it may be played."""
    problems = text_problems(task.goal, task.rubric.success_criteria)
    names = {tool.name for tool in agent.tools}
    problems += [
        f"unknown_expected_tool: expected tool {name!r} is not one of the agent's tools"
        for name in task.rubric.expected_tools
        if names and name not in names
    ]
    problems += [
        f"outcome_path_missing: expected state path {path!r} is not in the initial world"
        for path in task.expected_outcome.state
        if not _has_path(task.initial_state, path)
    ]
    return problems


def _has_path(world: JsonObject, path: str) -> bool:
    try:
        get_path(world, path)
    except KeyError:
        return False
    return True


def gate(task: Task, agent: AgentSpec) -> None:
    """Raise `TaskRejected` naming every rule `task` breaks."""
    problems = task_problems(task, agent)
    if problems:
        raise TaskRejected(f"task {task.id}: " + "; ".join(problems))
