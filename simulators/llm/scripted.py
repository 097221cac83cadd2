"""A scripted backend for unit tests: answers come from a list, a function, or the schema itself.

It runs through the same constrained-JSON decoding as the real engines, so a test exercises the
whole path except the model. Never a default.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from simulators.llm.base import ConstrainedChatModel, RawCompletion, Sampling

Answer = str | dict[str, Any] | list[Any]


@dataclass
class ScriptRequest:
    """What the scripted model was asked: plain chat turns and the answer's schema."""

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None
    sampling: Sampling

    @property
    def system(self) -> str:
        return next((m["content"] for m in self.messages if m["role"] == "system"), "")

    @property
    def last(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""


class ScriptedModel(ConstrainedChatModel):
    """Answers from `script`: a list consumed in order, or a function of the request.

    With no script it answers with a value generated from the request's schema, which makes a
    cheap, deterministic stand-in model for pipeline tests and benchmarks.
    """

    def __init__(
        self,
        script: Iterable[Answer] | Callable[[ScriptRequest], Answer] | None = None,
        name: str = "scripted",
        seed: int = 0,
        keep: int | None = None,
    ) -> None:
        self.name = name
        self._responder = script if callable(script) else None
        self._queue = list(script) if script is not None and not callable(script) else None
        self._seed = seed
        self.requests: deque[ScriptRequest] = deque(maxlen=keep)
        """What it was asked, oldest first; only the last `keep` when `keep` is set, so a long
        scripted run does not hold every prompt it ever saw."""
        self.asked = 0

    def _request_rng(self, request: ScriptRequest) -> random.Random:
        """A generator seeded by the request itself (its seed, turns and schema), so the same
        request always gets the same answer, whatever order concurrent episodes ask in: a run
        of scripted models is reproducible, as one of a real model at fixed seeds would be."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"{self._seed}:{request.sampling.seed}:".encode())
        for message in request.messages:
            digest.update(str(message.get("role")).encode())
            digest.update(b"\x00")
            digest.update(str(message.get("content") or "").encode())
            digest.update(b"\x01")
        if request.schema is not None:
            digest.update(json.dumps(request.schema, sort_keys=True).encode())
        return random.Random(digest.digest())

    async def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any] | None, sampling: Sampling
    ) -> RawCompletion:
        request = ScriptRequest(messages=messages, schema=schema, sampling=sampling)
        self.requests.append(request)
        self.asked += 1
        if self._responder is not None:
            answer = self._responder(request)
        elif self._queue is not None:
            if not self._queue:
                raise RuntimeError(f"{self.name}: script exhausted after {self.asked}")
            answer = self._queue.pop(0)
        else:
            answer = schema_instance(schema or {"type": "string"}, self._request_rng(request))
        text = answer if isinstance(answer, str) else json.dumps(answer)
        prompt_tokens = sum(len(m["content"]) for m in messages) // 4 + 1
        return RawCompletion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(text) // 4 + 1,
            finish_reason="stop",
        )


def schema_instance(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A small value valid against `schema` (the subset constrained decoding supports)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return schema_instance(rng.choice(schema[key]), rng, depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(part)
        return schema_instance(merged, rng, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return {
            name: schema_instance(sub, rng, depth + 1)
            for name, sub in properties.items()
            if name in required or rng.random() < 0.5
        }
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), min(2, int(schema.get("maxItems", 2))))
        return [schema_instance(schema.get("items", {}), rng, depth + 1) for _ in range(count)]
    if kind == "string":
        words = ["alpha", "blue", "river", "north", "seven", "quiet", "order", "lamp"]
        text = " ".join(rng.choice(words) for _ in range(3))
        low = int(schema.get("minLength", 0))
        high = int(schema.get("maxLength", len(text)))
        text = text.ljust(low, "x")[: max(high, low)]
        return text
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        high = int(schema.get("maximum", low + 100))
        return rng.randint(low, max(low, high))
    if kind == "number":
        low = float(schema.get("minimum", 0))
        high = float(schema.get("maximum", low + 100))
        return round(rng.uniform(low, max(low, high)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    return None
