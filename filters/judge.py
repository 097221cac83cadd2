"""The rubric judge: a model scores a trajectory against its task's success criteria.

The judge answers through a response schema (one `{score, reason}` object per criterion), so even
a small model yields a parseable verdict; answers that still fail to parse or validate, or leave a
criterion without a reason, are retried with another seed through the one retry loop every role
uses (`simulators.ask`), and after `max_attempts` the caller gets a `JudgeError` with the raw
output to record as a `Failure`.

Verdict: each criterion is scored 0 (not met), 1 (partly met) or 2 (fully met), mapped to 0, 0.5
and 1. `Judgement.score` is their mean. A trajectory passes when `score >= pass_threshold` and no
criterion scored 0: a high mean must not hide one criterion the agent ignored entirely.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

from schemas.records import (
    CriterionScore,
    Judgement,
    JudgeVote,
    Message,
    Task,
    TokenCount,
    Trajectory,
    canonical_json,
    content_id,
)
from simulators.ask import RoleOutputError, Usage, ask, merge_usage
from simulators.llm.base import ChatModel, Completion, Sampling
from simulators.llm.errors import ModelOutputError

MAX_TRANSCRIPT_CHARS = 6000
"""Transcript budget: enough for a typical episode, small enough for a 4k-token context."""
MAX_TOOL_RESULT_CHARS = 400
MAX_MESSAGE_CHARS = 1200
MAX_FIRST_USER_CHARS = 1000
MAX_RUBRIC_ITEM_CHARS = 300
SCORE_VALUES = {0: 0.0, 1: 0.5, 2: 1.0}
RETRY_MIN_TEMPERATURE = 0.7
"""A retry at temperature 0 would repeat the failed answer; retries sample at least this warm."""

JUDGE_INSTRUCTIONS = (
    "You are a strict grader of conversations between a user and an AI assistant that can "
    "call tools. Grade only what the transcript shows: a claim the assistant makes without a "
    "tool result to back it counts as not done. For each success criterion give a score: "
    "0 = not met, 1 = partly met, 2 = fully met, and a one-sentence reason."
)


class JudgeError(ModelOutputError):
    """The judge gave no usable verdict in `max_attempts` tries; `raw_output` is the last answer."""

    def __init__(
        self,
        message: str,
        raw_output: str = "",
        *,
        attempts: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        super().__init__(message, raw_output)
        self.attempts = attempts
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


@dataclass
class JudgeResult:
    """A verdict and what it cost, so the caller can count judge tokens for the manifest.

    Token counts cover every attempt, also those whose answer was unusable: the engine spent them.
    """

    judgement: Judgement
    prompt_tokens: int
    completion_tokens: int
    requests: int
    retries: int = 0
    wait_s: float = 0.0
    """Time spent waiting on the judge model, over all attempts."""


def response_schema(n_criteria: int) -> dict[str, Any]:
    """The judge's answer schema: `c1..cN`, each a `{reason, score: 0|1|2}` object, all required.

    The reason comes first: constrained decoding writes properties in order, so the judge states
    its evidence before it commits to a score.
    """
    item = {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "minLength": 1},
            "score": {"type": "integer", "enum": [0, 1, 2]},
        },
        "required": ["score", "reason"],
        "additionalProperties": False,
    }
    keys = [f"c{i}" for i in range(1, n_criteria + 1)]
    return {
        "type": "object",
        "properties": {key: item for key in keys},
        "required": keys,
        "additionalProperties": False,
    }


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 15] + " ...[truncated]"


def _render_message(message: Message, names: dict[str, str]) -> str:
    """One message as one compact line: `role: content`, calls as `name(args)`."""
    if message.role == "tool":
        name = message.name or names.get(message.tool_call_id or "", "tool")
        return f"tool {name}: {_clip(message.content or '', MAX_TOOL_RESULT_CHARS)}"
    parts = []
    if message.content and message.content.strip():
        parts.append(_clip(message.content, MAX_MESSAGE_CHARS))
    for call in message.tool_calls or []:
        try:
            arguments = canonical_json(json.loads(call.function.arguments))
        except json.JSONDecodeError:
            arguments = call.function.arguments
        parts.append(f"{call.function.name}({_clip(arguments, MAX_TOOL_RESULT_CHARS)})")
    return f"{message.role}: {' | '.join(parts) or '(empty)'}"


def render_transcript(trajectory: Trajectory, max_chars: int = MAX_TRANSCRIPT_CHARS) -> str:
    """The conversation, compact and bounded: the first user message plus as much of the end
    as fits in `max_chars`, since the outcome is decided at the end."""
    names = {
        call.id: call.function.name
        for message in trajectory.messages
        for call in message.tool_calls or []
    }
    lines: list[str] = []
    first_user: int | None = None
    for message in trajectory.messages:
        if message.role == "system":
            continue  # the agent's prompt; the rubric says what matters
        if message.role == "user" and first_user is None:
            first_user = len(lines)
            lines.append(f"user: {_clip(message.content or '', MAX_FIRST_USER_CHARS)}")
        else:
            lines.append(_render_message(message, names))
    if sum(len(line) + 1 for line in lines) <= max_chars:
        return "\n".join(lines)
    # Too long: keep the request (first user message) and the most recent messages.
    head = [] if first_user is None else [lines[first_user]]
    rest = lines if first_user is None else lines[first_user + 1 :]
    budget = max_chars - sum(len(line) + 1 for line in head)
    tail: list[str] = []
    for line in reversed(rest):
        if len(line) + 1 > budget:
            break
        tail.append(line)
        budget -= len(line) + 1
    tail.reverse()
    omitted = len(lines) - len(head) - len(tail)
    marker = [f"... ({omitted} messages omitted) ..."] if omitted else []
    return "\n".join(head + marker + tail)


def judge_messages(
    trajectory: Trajectory, task: Task, max_chars: int = MAX_TRANSCRIPT_CHARS
) -> list[Message]:
    """The judge's prompt: grading instructions and rubric as system, the transcript as user."""
    rubric = task.rubric
    lines = [JUDGE_INSTRUCTIONS, "", f"The user's goal: {_clip(task.goal, MAX_RUBRIC_ITEM_CHARS)}"]
    lines += ["", "Success criteria:"]
    lines += [
        f"c{i}. {_clip(criterion, MAX_RUBRIC_ITEM_CHARS)}"
        for i, criterion in enumerate(rubric.success_criteria, start=1)
    ]
    if rubric.expected_tools:
        lines += ["", f"Expected tool use, in order: {', '.join(rubric.expected_tools)}"]
    if rubric.checkpoints:
        lines += ["", "Checkpoints:"]
        lines += [f"- {_clip(point, MAX_RUBRIC_ITEM_CHARS)}" for point in rubric.checkpoints]
    keys = ", ".join(f"c{i}" for i in range(1, len(rubric.success_criteria) + 1))
    lines += [
        "",
        f'Answer with JSON only: {{"c1": {{"reason": "...", "score": 0|1|2}}, ...}} '
        f"with keys {keys}.",
    ]
    transcript = render_transcript(trajectory, max_chars)
    return [
        Message(role="system", content="\n".join(lines)),
        Message(role="user", content=f"Transcript:\n{transcript}\n\nGrade each criterion."),
    ]


def _base_seed(trajectory: Trajectory, sampling: Sampling | None) -> int:
    if sampling is not None and sampling.seed is not None:
        return sampling.seed
    return int(content_id("s", trajectory.id)[2:10], 16)


def reasons_given(completion: Completion) -> str | None:
    """A verdict must say why for every criterion: a score without a reason is retried."""
    answer = completion.parsed if isinstance(completion.parsed, dict) else {}
    missing = [
        key for key, item in sorted(answer.items())
        if not any(ch.isalpha() for ch in str(item.get("reason", "")))
    ]
    return f"no reason given for {', '.join(missing)}" if missing else None


async def judge(
    trajectory: Trajectory,
    task: Task,
    model: ChatModel,
    sampling: Sampling | None = None,
    pass_threshold: float = 0.5,
    max_attempts: int = 3,
    usage: Usage | None = None,
) -> JudgeResult:
    """Score `trajectory` against `task.rubric` with `model`; see the module doc for the verdict.

    The request goes through `simulators.ask.ask`, the retry loop every role shares; the tokens
    of every attempt are added to `usage["judge"]` (when given) whether or not a verdict comes
    back. Raises `JudgeError` when no attempt gives an answer valid against the response schema
    with a reason per criterion; `ModelError` (transport) propagates, since backends retry
    those themselves.
    """
    criteria = task.rubric.success_criteria
    base = sampling or Sampling(temperature=0.0, max_tokens=64 * len(criteria) + 32)
    seeded = base.model_copy(update={"seed": _base_seed(trajectory, sampling)})
    own: Usage = {}
    try:
        completion = await ask(
            model, "judge", own, judge_messages(trajectory, task), seeded,
            schema=response_schema(len(criteria)), attempts=max_attempts,
            check=reasons_given, retry_temperature=RETRY_MIN_TEMPERATURE,
        )
    except RoleOutputError as exc:
        spent = own.get("judge", TokenCount())
        raise JudgeError(
            f"{model.name}: no valid verdict for {trajectory.id} in {spent.requests} attempts; "
            f"last: {exc}",
            exc.raw_output,
            attempts=spent.requests,
            prompt_tokens=spent.prompt,
            completion_tokens=spent.completion,
        ) from exc
    finally:
        if usage is not None:
            merge_usage(usage, own)
    spent = own["judge"]
    judgement = _verdict(trajectory, criteria, completion.parsed, model.name, pass_threshold)
    return JudgeResult(
        judgement, spent.prompt, spent.completion, spent.requests, spent.retries, spent.wait_s
    )


Voting = Literal["majority", "mean"]


async def judge_committee(
    trajectory: Trajectory,
    task: Task,
    models: list[ChatModel],
    sampling: Sampling | None = None,
    pass_threshold: float = 0.5,
    max_attempts: int = 3,
    usage: Usage | None = None,
    voting: Voting = "majority",
) -> JudgeResult:
    """Several judges score `trajectory` at once (a review committee, as in APIGen-MT); their
    verdicts are combined by `voting`:

    - `majority`: passed when more than half the judges pass it;
    - `mean`: passed when the mean score reaches `pass_threshold` and no criterion's mean is 0.

    Either way the score is the mean over judges and criteria, each criterion's score the mean of
    the judges' and its reason theirs in turn, `votes` keeps each judge's verdict and `agreement`
    the share of judges whose verdict is the committee's. Every judge's tokens go to
    `usage["judge"]`; if any judge gives no verdict, the committee raises its `JudgeError`.
    """
    outcomes = await asyncio.gather(
        *(judge(trajectory, task, m, sampling, pass_threshold, max_attempts, usage)
          for m in models),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    results = [o for o in outcomes if isinstance(o, JudgeResult)]
    judgement = combine_votes(
        trajectory, [r.judgement for r in results], voting, pass_threshold
    )
    return JudgeResult(
        judgement,
        sum(r.prompt_tokens for r in results),
        sum(r.completion_tokens for r in results),
        sum(r.requests for r in results),
        sum(r.retries for r in results),
        round(sum(r.wait_s for r in results), 4),
    )


def combine_votes(
    trajectory: Trajectory, judgements: list[Judgement], voting: Voting, pass_threshold: float
) -> Judgement:
    """One committee verdict from its members' (see `judge_committee`)."""
    n = len(judgements)
    criteria = [s.criterion for s in judgements[0].scores]
    scores = [
        CriterionScore(
            criterion=criterion,
            score=sum(j.scores[i].score for j in judgements) / n,
            reason=" | ".join(f"{j.judge_model}: {j.scores[i].reason}" for j in judgements),
        )
        for i, criterion in enumerate(criteria)
    ]
    mean = sum(s.score for s in scores) / len(scores)
    if voting == "majority":
        passed = 2 * sum(j.passed for j in judgements) > n
    else:
        passed = mean >= pass_threshold and all(s.score > 0 for s in scores)
    return Judgement(
        trajectory_id=trajectory.id,
        scores=scores,
        score=mean,
        passed=passed,
        reasons=[s.reason for s in scores],
        judge_model=",".join(j.judge_model for j in judgements),
        votes=[JudgeVote(judge_model=j.judge_model, score=j.score, passed=j.passed)
               for j in judgements],
        agreement=round(sum(j.passed == passed for j in judgements) / n, 4),
    )


def _verdict(
    trajectory: Trajectory,
    criteria: list[str],
    answer: dict[str, Any],
    judge_model: str,
    pass_threshold: float,
) -> Judgement:
    scores = [
        CriterionScore(
            criterion=criterion,
            score=SCORE_VALUES[answer[f"c{i}"]["score"]],
            reason=answer[f"c{i}"]["reason"],
        )
        for i, criterion in enumerate(criteria, start=1)
    ]
    mean = sum(s.score for s in scores) / len(scores)
    return Judgement(
        trajectory_id=trajectory.id,
        scores=scores,
        score=mean,
        passed=mean >= pass_threshold and all(s.score > 0 for s in scores),
        reasons=[s.reason for s in scores],
        judge_model=judge_model,
    )


def checks_judgement(trajectory: Trajectory, failed_checks: list[str]) -> Judgement:
    """The verdict for a trajectory the deterministic checks rejected; no model is asked."""
    return Judgement(
        trajectory_id=trajectory.id,
        score=0.0,
        passed=False,
        failed_checks=list(failed_checks),
        judge_model="checks",
    )
