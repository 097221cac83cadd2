"""The outcome reward: does the episode's final world match the task's expected one?

As tau-bench scores agents, by state, not by opinion: the expected final world is the initial
world with the task's `expected_outcome.state` applied; the episode gets reward 1 when

- every expected path holds its expected value in the final world,
- no other value of the initial world changed or disappeared (new records may appear: a booking
  id a tool invents cannot be foreseen), and
- every expected fact appears in the agent's replies (case-insensitive, commas and extra spaces
  ignored, as tau-bench matches its outputs),

and 0 otherwise, with reasons. A task that brings a workspace is scored on its files too: the
share of its workspace checks that hold, where every hidden test is one check (run in a sandbox
after the episode, see `simulators.workspace_tools`), every required point of a file one, every
heading count one, every expected email one (sent to the right address, every expected
attachment attached as the file it is at the end). With an expected outcome as well, the two
multiply. A task with neither has no reward (None). The
rubric judge's verdict is a separate opinion; both are recorded on the `Judgement`, and neither
overrides the other.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from schemas.records import (
    Judgement,
    Outcome,
    Task,
    Trajectory,
    WorkspaceSpec,
    canonical_json,
)
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


def workspace_score(spec: WorkspaceSpec, final: dict[str, Any]) -> tuple[float, list[str]]:
    """The share of `spec`'s checks that the final workspace passes, and what failed."""
    files = final.get("files") or {}
    passed, total, problems = 0, 0, []
    hidden = final.get("hidden_tests") or {}
    if spec.hidden_tests:
        n = max(int(hidden.get("total") or 0), 1)
        ok = min(int(hidden.get("passed") or 0), n)
        passed, total = passed + ok, total + n
        if ok < n:
            failing = [k for k, v in (hidden.get("outcomes") or {}).items() if v != "passed"]
            problems.append(
                f"hidden tests: {ok}/{n} passed"
                + (f" (failing: {', '.join(failing[:5])})" if failing else "")
                + (f" [{hidden['error']}]" if hidden.get("error") else "")
            )
    for path, points in spec.required_points.items():
        text = _norm(str((files.get(path) or {}).get("content") or ""))
        for point in points:
            total += 1
            if path in files and _norm(point) in text:
                passed += 1
            else:
                problems.append(f"file: {path} does not say {point!r}")
    for path, least in spec.min_headings.items():
        total += 1
        text = str((files.get(path) or {}).get("content") or "")
        count = sum(1 for line in text.splitlines() if line.lstrip().startswith("#"))
        if count >= least:
            passed += 1
        else:
            problems.append(f"file: {path} has {count} headings, expected at least {least}")
    outbox = final.get("outbox") or []
    for expected in spec.emails:
        total += 1
        if any(_email_matches(expected, sent, files) for sent in outbox):
            passed += 1
        else:
            problems.append(
                f"email: nothing sent to {expected.to} with {expected.attachments or 'no'} "
                "attachments as they are at the end"
            )
    return (passed / total if total else 1.0), problems


def _email_matches(expected: Any, sent: dict[str, Any], files: dict[str, Any]) -> bool:
    if str(sent.get("to", "")).strip().lower() != expected.to.strip().lower():
        return False
    subject = _norm(str(sent.get("subject", "")))
    if any(_norm(word) not in subject for word in expected.subject_contains):
        return False
    attached = {a.get("path"): a.get("sha256") for a in sent.get("attachments") or []}
    for path in expected.attachments:
        final = files.get(path) or {}
        if path not in attached or attached[path] != final.get("sha256"):
            return False
    return True


def score_trajectory(trajectory: Trajectory, task: Task) -> Reward:
    """The reward of `trajectory` against `task.expected_outcome` (see the module doc)."""
    outcome = task.expected_outcome
    spec = task.workspace
    if spec is not None and spec.has_checks():
        share, problems = workspace_score(spec, trajectory.final_state.get("workspace") or {})
        if not outcome.is_empty():
            base = score_trajectory(trajectory, task.model_copy(update={"workspace": None}))
            share *= base.reward or 0.0
            problems += [r for r in base.reasons if base.reward != 1.0]
        return Reward(
            reward=round(share, 6),
            state_match=None,
            reasons=problems[:MAX_REASONS] or ["every workspace check passed"],
        )
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
