"""Asking a model for a structured answer, with bounded retries and token accounting.

Every role goes through `ask` (user, agent, tool, judge, synthesizer): a model answer that
cannot be parsed or breaks its schema is retried with another seed, a bounded number of times,
then raised with the last raw output so the episode can become a Failure that shows what the
model said. Every answer the engine produced is counted in `usage`, the unusable ones too: the
tokens were spent, and `agentmill plan` scales from these counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from schemas.records import Message, TokenCount
from simulators import safe_schema
from simulators.llm.base import ChatModel, Completion, Sampling
from simulators.llm.errors import ModelError, ModelOutputError

Usage = dict[str, TokenCount]


class RoleOutputError(ModelOutputError):
    """A role's model kept answering with unusable output; carries the role and raw output."""

    def __init__(self, role: str, message: str, raw_output: str = "") -> None:
        super().__init__(f"{role}: {message}", raw_output)
        self.role = role


def count(usage: Usage, role: str, completion: Completion, wait_s: float = 0.0) -> None:
    usage.setdefault(role, TokenCount()).add(
        completion.prompt_tokens, completion.completion_tokens, completion.retries, wait_s
    )


def merge_usage(into: Usage, other: Usage) -> None:
    """Add `other`'s counts to `into`, role by role."""
    for role, tokens in other.items():
        target = into.setdefault(role, TokenCount())
        target.prompt += tokens.prompt
        target.completion += tokens.completion
        target.requests += tokens.requests
        target.retries += tokens.retries
        target.wait_s = round(target.wait_s + tokens.wait_s, 4)


NO_REMOTE = safe_schema.NO_REMOTE
"""An empty registry: a `$ref` outside the schema is unresolvable instead of fetched (jsonschema
would otherwise download it)."""


def schema_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """Validation errors of `value` against `schema`, as `pointer: message` strings (regexes
    bounded in time: `simulators.safe_schema`)."""
    return [
        f"/{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in safe_schema.validator(schema).iter_errors(value)
    ]


async def ask(
    model: ChatModel,
    role: str,
    usage: Usage,
    messages: list[Message],
    sampling: Sampling,
    *,
    schema: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    attempts: int = 3,
    check: Callable[[Completion], str | None] | None = None,
    retry_temperature: float | None = None,
) -> Completion:
    """A completion that parses and passes `schema` and `check`, or RoleOutputError.

    `retry_temperature` is the least temperature of a retry: a greedy retry would repeat the
    answer it replaces.
    """
    last_error, last_raw = "no attempt made", ""
    for attempt in range(max(1, attempts)):
        seed = None if sampling.seed is None else sampling.seed + 7919 * attempt
        update: dict[str, Any] = {"seed": seed}
        if attempt and retry_temperature is not None and sampling.temperature < retry_temperature:
            update["temperature"] = retry_temperature
        started = time.perf_counter()
        try:
            completion = await model.complete(
                messages,
                tools=tools,
                response_schema=schema,
                sampling=sampling.model_copy(update=update),
            )
        except ModelOutputError as exc:
            usage.setdefault(role, TokenCount()).add(
                exc.prompt_tokens, exc.completion_tokens, exc.retries,
                time.perf_counter() - started,
            )
            last_error, last_raw = str(exc), exc.raw_output
            continue
        except ModelError:
            tokens = usage.setdefault(role, TokenCount())
            tokens.wait_s = round(tokens.wait_s + time.perf_counter() - started, 4)
            raise
        count(usage, role, completion, time.perf_counter() - started)
        problem = None
        if schema is not None:
            errors = schema_errors(schema, completion.parsed)
            problem = f"answer breaks its schema: {'; '.join(errors[:3])}" if errors else None
        if problem is None and check is not None:
            problem = check(completion)
        if problem is None:
            return completion
        last_error, last_raw = problem, completion.text
    message = f"no usable answer after {attempts} attempts: {last_error}"
    raise RoleOutputError(role, message, last_raw)
