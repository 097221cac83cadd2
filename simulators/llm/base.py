"""The one async chat interface every role talks to, whatever serves the model."""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.records import Message, ToolCall
from simulators.llm import toolcall
from simulators.llm.errors import ModelError as ModelError  # older import paths, kept working
from simulators.llm.errors import ModelOutputError
from simulators.llm.errors import ModelUnavailable as ModelUnavailable


class Sampling(BaseModel):
    """Sampling settings for one request; `seed` makes a request reproducible."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1)
    seed: int | None = None


@dataclass
class Completion:
    """What a model answered: text, parsed tool calls, token counts and why it stopped."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    model: str = ""
    parsed: Any = None
    """The decoded JSON value when the request asked for a response schema or tool calls."""
    retries: int = 0
    """Extra transport attempts this answer took (429, 5xx, dropped connections)."""


class ChatModel(abc.ABC):
    """A chat model behind `complete`; one instance is shared by every episode of a process."""

    name: str

    @abc.abstractmethod
    async def complete(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        response_schema: dict[str, Any] | None = None,
        sampling: Sampling | None = None,
    ) -> Completion:
        """Answer `messages`.

        With `tools` (OpenAI `tools` entries) the answer may carry tool calls; with
        `response_schema` its text is JSON valid against that schema and `parsed` holds it.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release engines, connections and processes."""


@dataclass
class RawCompletion:
    """What an engine produced for one prompt, before agentmill decodes it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    retries: int = 0


class ConstrainedChatModel(ChatModel):
    """A backend whose engine takes plain chat turns and an optional JSON Schema constraint.

    Subclasses implement `generate`; tool calls and response schemas are handled here once, the
    same way for every engine, through constrained JSON (see `simulators.llm.toolcall`).
    """

    bound_strings: int | None = None
    bound_items: int | None = None
    bound_prose: int | None = None
    """Generation-only limits on strings, arrays and prose; see `toolcall.bound_schema`."""
    native_tools: bool = False
    """Offered tools go to the model's own tool-call format (`tool_call_mode: native`) through
    `complete_native`, instead of constrained JSON."""

    async def complete_native(
        self, messages: list[Message], tools: list[dict[str, Any]], sampling: Sampling
    ) -> Completion:
        """An answer in the model's own tool-call format; backends with `native_tools` set
        implement it, usually through `native_completion`."""
        raise NotImplementedError(f"{self.name}: no native tool-call mode")

    def native_completion(
        self,
        raw: RawCompletion,
        sampling: Sampling,
        parse: Callable[[], tuple[str, list[ToolCall], list[dict[str, Any]]]],
    ) -> Completion:
        """A native-mode answer as a Completion: a truncated answer is an output error before
        anything is parsed; `parse` gives (content, tool calls, decoded calls)."""
        if raw.finish_reason == "length":
            raise ModelOutputError(
                f"{self.name}: answer truncated at {sampling.max_tokens}", raw.text
            ).spent(raw)
        try:
            content, calls, decoded = parse()
        except ModelOutputError as exc:
            raise exc.spent(raw)  # noqa: B904 - the same error, with its cost
        return Completion(
            text=content,
            tool_calls=calls,
            prompt_tokens=raw.prompt_tokens,
            completion_tokens=raw.completion_tokens,
            finish_reason=raw.finish_reason,
            model=self.name,
            parsed={"tool_calls": decoded} if calls else {"content": content, "final": False},
            retries=raw.retries,
        )

    @abc.abstractmethod
    async def generate(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any] | None,
        sampling: Sampling,
    ) -> RawCompletion:
        """Generate from plain chat turns; with `schema`, constrain the text to JSON of it."""

    async def complete(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        response_schema: dict[str, Any] | None = None,
        sampling: Sampling | None = None,
    ) -> Completion:
        sampling = sampling or Sampling()
        if tools and self.native_tools:
            return await self.complete_native(messages, tools, sampling)
        plain = toolcall.to_plain_messages(messages, tools)
        if tools:
            schema = toolcall.agent_output_schema(tools)
        else:
            schema = response_schema
        if schema is not None and (self.bound_strings or self.bound_items or self.bound_prose):
            schema = toolcall.bound_schema(
                schema, self.bound_strings, self.bound_items, self.bound_prose
            )
        elif schema is not None:
            schema = toolcall.unmarked(schema)
        raw = await self.generate(plain, schema, sampling)
        try:
            return self._decode(raw, tools, response_schema, schema, sampling, len(messages))
        except ModelOutputError as exc:
            raise exc.spent(raw)  # noqa: B904 - the same error, with its cost

    def _decode(
        self,
        raw: RawCompletion,
        tools: list[dict[str, Any]] | None,
        response_schema: dict[str, Any] | None,
        schema: dict[str, Any] | None,
        sampling: Sampling,
        n_messages: int,
    ) -> Completion:
        """The raw answer as a Completion, or ModelOutputError when it cannot be used."""
        completion = Completion(
            text=raw.text,
            prompt_tokens=raw.prompt_tokens,
            completion_tokens=raw.completion_tokens,
            finish_reason=raw.finish_reason,
            model=self.name,
            retries=raw.retries,
        )
        if raw.finish_reason == "length" and schema is not None:
            raise ModelOutputError(
                f"{self.name}: answer truncated at {sampling.max_tokens} tokens", raw.text
            )
        if tools:
            salt = f"{n_messages}:{sampling.seed}"
            content, calls, final, value = toolcall.parse_agent_output(raw.text, salt)
            completion.text = content or ""
            completion.tool_calls = calls
            completion.parsed = {**value, "final": final} if not calls else value
        elif response_schema is not None:
            try:
                completion.parsed = json.loads(raw.text)
            except json.JSONDecodeError as exc:
                raise ModelOutputError(f"{self.name}: answer is not JSON: {exc}", raw.text) from exc
        return completion
