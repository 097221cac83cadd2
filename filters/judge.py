"""The rubric judge: a model scores a trajectory against its task's success criteria.

The judge answers through a response schema (one `{score, reason}` object per criterion), so even
a small model yields a parseable verdict; answers that still fail to parse or validate are retried
with another seed, and after `max_attempts` the caller gets a `JudgeError` with the raw output to
record as a `Failure`.

Verdict: each criterion is scored 0 (not met), 1 (partly met) or 2 (fully met), mapped to 0, 0.5
and 1. `Judgement.score` is their mean. A trajectory passes when `score >= pass_threshold` and no
criterion scored 0: a high mean must not hide one criterion the agent ignored entirely.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from schemas.records import (
    CriterionScore,
    Judgement,
    Message,
    Task,
    Trajectory,
    canonical_json,
    content_id,
)
from simulators.llm.base import ChatModel, ModelOutputError, Sampling

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

    Token counts cover every attempt whose completion came back; attempts whose output the backend
    rejected (raising `ModelOutputError`) count as requests only, since their usage is not reported.
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
            "reason": {"type": "string"},
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


def _attempt_sampling(sampling: Sampling, seed: int, attempt: int) -> Sampling:
    update: dict[str, Any] = {"seed": seed + attempt}
    if attempt > 0 and sampling.temperature < RETRY_MIN_TEMPERATURE:
        update["temperature"] = RETRY_MIN_TEMPERATURE
    return sampling.model_copy(update=update)


async def judge(
    trajectory: Trajectory,
    task: Task,
    model: ChatModel,
    sampling: Sampling | None = None,
    pass_threshold: float = 0.5,
    max_attempts: int = 3,
) -> JudgeResult:
    """Score `trajectory` against `task.rubric` with `model`; see the module doc for the verdict.

    Raises `JudgeError` when no attempt gives an answer valid against the response schema;
    `ModelError` (transport) propagates, since backends retry those themselves.
    """
    criteria = task.rubric.success_criteria
    schema = response_schema(len(criteria))
    validator = Draft202012Validator(schema)
    messages = judge_messages(trajectory, task)
    base = sampling or Sampling(temperature=0.0, max_tokens=64 * len(criteria) + 32)
    seed = _base_seed(trajectory, sampling)
    prompt_tokens = completion_tokens = requests = retries = 0
    wait_s = 0.0
    raw, problem = "", "no attempt made"
    for attempt in range(max(1, max_attempts)):
        requests += 1
        started = time.perf_counter()
        try:
            completion = await model.complete(
                messages,
                response_schema=schema,
                sampling=_attempt_sampling(base, seed, attempt),
            )
        except ModelOutputError as exc:
            wait_s += time.perf_counter() - started
            raw, problem = exc.raw_output, str(exc)
            continue
        wait_s += time.perf_counter() - started
        prompt_tokens += completion.prompt_tokens
        completion_tokens += completion.completion_tokens
        retries += completion.retries
        raw = completion.text
        answer = completion.parsed
        if answer is None:
            try:
                answer = json.loads(completion.text)
            except json.JSONDecodeError as exc:
                problem = f"answer is not JSON: {exc}"
                continue
        error = best_match(validator.iter_errors(answer))
        if error is not None:
            problem = f"answer breaks the schema at '{error.json_path}': {error.message}"
            continue
        judgement = _verdict(trajectory, criteria, answer, model.name, pass_threshold)
        return JudgeResult(
            judgement, prompt_tokens, completion_tokens, requests, retries, round(wait_s, 4)
        )
    raise JudgeError(
        f"{model.name}: no valid verdict for {trajectory.id} in {requests} attempts; "
        f"last: {problem}",
        raw,
        attempts=requests,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
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
