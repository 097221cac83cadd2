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

Rollouts (`simulators.environment`) add a process reward, as Kimi K2 rewarded "the efficiency
and logic of its process": repeated calls, schema-invalid arguments, unknown tools, calls beyond
the expected chain, writes in a task to decline, giving up after a transient failure. Each part
is named in the result and weighted by `RewardConfig`; every part counts the calls a finder in
`filters.checks` returns, the same finder the deterministic check with that rule reports from
(`repeated_call`, `invalid_arguments`, `unknown_tool`, and the opt-in `PROCESS_CHECKS`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from filters import checks
from filters.checks import CallFinding, CheckContext, Finder
from schemas.records import (
    Judgement,
    Outcome,
    Task,
    ToolSpec,
    Trajectory,
    WorkspaceSpec,
    canonical_json,
)
from simulators.environment import Score, Scorer
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
    if spec.emails_at_most is not None:
        total += 1
        if len(outbox) <= spec.emails_at_most:
            passed += 1
        else:
            problems.append(f"email: {len(outbox)} sent, at most {spec.emails_at_most} expected")
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


# The process reward ------------------------------------------------------------------------------

PROCESS_PARTS = (
    "repeated_calls",
    "invalid_arguments",
    "unknown_tools",
    "extra_calls",
    "decline_writes",
    "gave_up_after_fault",
)


class RewardConfig(BaseModel):
    """How a rollout's reward is made: the outcome (0 or 1) and the process (how the agent
    worked), `total = (1 - process_share) * outcome + process_share * process`.

    The process score starts at 1 and loses `weight * count` for each named part (floored at 0);
    a task without an expected outcome is rewarded by its process alone.
    """

    model_config = ConfigDict(extra="forbid")

    process_share: float = Field(default=0.2, ge=0.0, le=1.0)
    repeated_calls: float = Field(
        default=0.25, ge=0.0,
        description="Per call identical to an earlier call the world answered (not an injected "
        "failure, not a retryable 429/503/504 error): `filters.checks.repeated_calls`.",
    )
    invalid_arguments: float = Field(
        default=0.25, ge=0.0, description="Per call whose arguments break the tool's schema."
    )
    unknown_tools: float = Field(
        default=0.25, ge=0.0, description="Per call to a tool that was not offered."
    )
    extra_calls: float = Field(
        default=0.1, ge=0.0,
        description="Per call beyond the task's expected chain length (retries after an "
        "injected failure excepted); tasks that name no expected tools are not counted.",
    )
    decline_writes: float = Field(
        default=1.0, ge=0.0, description="Per call to a write tool in a `decline` task."
    )
    gave_up_after_fault: float = Field(
        default=0.5, ge=0.0,
        description="Per injected transient failure (rate limit, timeout) never retried.",
    )


@dataclass
class ProcessScore:
    """The process score, each part's count and penalty, and why."""

    score: float
    counts: dict[str, int]
    penalties: dict[str, float]
    reasons: list[str]


PROCESS_FINDERS: dict[str, Finder] = {
    "repeated_calls": checks.repeated_calls,
    "invalid_arguments": checks.invalid_argument_calls,
    "unknown_tools": checks.unknown_tool_calls,
    "extra_calls": checks.calls_beyond_chain,
    "decline_writes": checks.decline_write_calls,
    "gave_up_after_fault": checks.abandoned_fault_calls,
}
"""Each process part's finder in `filters.checks`: the check with the same rule reports the
same calls (`repeated_call` after its threshold), so the two cannot drift apart."""


def process_findings(
    trajectory: Trajectory, task: Task, tools: Mapping[str, ToolSpec]
) -> dict[str, list[CallFinding]]:
    """The calls behind each process part, found by the deterministic checks' own finders."""
    ctx = CheckContext(tools=tools, max_turns=len(trajectory.messages) + 1, task=task)
    return {part: PROCESS_FINDERS[part](trajectory, ctx) for part in PROCESS_PARTS}


def process_counts(
    trajectory: Trajectory, task: Task, tools: Mapping[str, ToolSpec]
) -> tuple[dict[str, int], list[str]]:
    """How often the agent did each thing `PROCESS_PARTS` names, and one reason per finding."""
    findings = process_findings(trajectory, task, tools)
    counts = {part: len(found) for part, found in findings.items()}
    reasons = [f"{part}: {f.detail}" for part, found in findings.items() for f in found]
    return counts, reasons


def process_score(
    trajectory: Trajectory, task: Task, tools: Mapping[str, ToolSpec], config: RewardConfig
) -> ProcessScore:
    counts, reasons = process_counts(trajectory, task, tools)
    penalties = {part: round(getattr(config, part) * counts[part], 6) for part in PROCESS_PARTS}
    score = max(0.0, 1.0 - sum(penalties.values()))
    return ProcessScore(round(score, 6), counts, penalties, reasons[:MAX_REASONS])


def episode_scorer(config: RewardConfig | None = None) -> Scorer:
    """The environment's scorer: outcome (`score_trajectory`) plus process, every part named.

    `parts` holds `outcome` (absent when the task has none), `process`, and each process part
    as its (negative) penalty, so a trainer can log them apart."""
    config = config or RewardConfig()

    def score(trajectory: Trajectory, task: Task, tools: list[ToolSpec]) -> Score:
        outcome = score_trajectory(trajectory, task)
        process = process_score(trajectory, task, {t.name: t for t in tools}, config)
        parts: dict[str, float] = {"process": process.score}
        parts.update({part: -p if p else 0.0 for part, p in process.penalties.items()})
        if outcome.reward is None:
            total = process.score
        else:
            parts["outcome"] = outcome.reward
            share = config.process_share
            total = (1.0 - share) * outcome.reward + share * process.score
        reasons = [*outcome.reasons, *process.reasons]
        return Score(total=round(total, 6), parts=parts, reasons=reasons)

    return score
