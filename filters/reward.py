"""The outcome reward: does the episode's final world match the task's expected one?

As tau-bench scores agents, by state, not by opinion: the expected final world is the initial
world with the task's `expected_outcome.state` applied; the episode gets reward 1 when

- every expected path holds its expected value in the final world,
- no other value of the initial world changed or disappeared (new records may appear: a booking
  id a tool invents cannot be foreseen), and
- every expected fact appears in the agent's replies (case-insensitive, commas and extra spaces
  ignored, as tau-bench matches its outputs),

and 0 otherwise, with reasons. A task without an expected outcome has no reward (None). The
rubric judge's verdict is a separate opinion; both are recorded on the `Judgement`, and neither
overrides the other.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from schemas.records import Judgement, Outcome, Task, Trajectory, canonical_json
from simulators.world import leaves, set_path

MAX_REASONS = 8


@dataclass
class Reward:
    """The reward and what decided it."""

    reward: float | None
    state_match: bool | None = None
    facts_found: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def expected_final_state(initial_state: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """The initial world with the expected changes applied."""
    state = copy.deepcopy(initial_state)
    for path, value in outcome.state.items():
        set_path(state, path, value)
    return state


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace(",", "")).strip()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    return canonical_json(a) == canonical_json(b)


def state_differences(
    initial_state: dict[str, Any], outcome: Outcome, final_state: dict[str, Any]
) -> list[str]:
    """Why `final_state` is not the expected one; empty when it is."""
    expected = leaves(expected_final_state(initial_state, outcome))
    final = leaves(final_state)
    problems = []
    for path in sorted(expected):
        if path not in final:
            problems.append(f"state: {path} is missing, expected {canonical_json(expected[path])}")
        elif not _same(final[path], expected[path]):
            problems.append(
                f"state: {path} is {canonical_json(final[path])}, "
                f"expected {canonical_json(expected[path])}"
            )
    return problems


def score_trajectory(trajectory: Trajectory, task: Task) -> Reward:
    """The reward of `trajectory` against `task.expected_outcome` (see the module doc)."""
    outcome = task.expected_outcome
    if outcome.is_empty():
        return Reward(reward=None, reasons=["no expected outcome"])
    problems = state_differences(task.initial_state, outcome, trajectory.final_state)
    said = _norm(
        " ".join(m.content or "" for m in trajectory.messages if m.role == "assistant")
    )
    found = [fact for fact in outcome.facts if _norm(fact) in said]
    problems += [f"fact: the agent never said {f!r}" for f in outcome.facts if f not in found]
    return Reward(
        reward=0.0 if problems else 1.0,
        state_match=not any(p.startswith("state:") for p in problems),
        facts_found=found,
        reasons=problems[:MAX_REASONS] or ["final state and facts match the expected outcome"],
    )


def with_reward(judgement: Judgement, reward: Reward) -> Judgement:
    """`judgement` with the outcome reward recorded beside the judge's verdict (unchanged)."""
    body = judgement.model_dump(exclude={"id"})
    body.update(reward=reward.reward, reward_reasons=reward.reasons)
    return Judgement.model_validate(body)
