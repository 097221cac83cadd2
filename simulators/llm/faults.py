"""Fault injection: any chat model behind a misbehaving OpenAI-compatible server, in process.

`faulty_model(inner, rate=0.2)` returns the real `openai` backend whose HTTP goes to an in-process
transport that answers from `inner` (any `ChatModel`, e.g. the scripted one) and, at set rates,
misbehaves the way real servers do:

| fault       | what the client sees                                | who deals with it      |
|-------------|-----------------------------------------------------|------------------------|
| `429`       | HTTP 429 with Retry-After                           | backend: backoff       |
| `5xx`       | HTTP 503, its body echoing the Authorization header | backend: backoff, scrub |
| `timeout`   | the read times out                                  | backend: backoff       |
| `drop`      | the connection closes mid-answer                    | backend: backoff       |
| `empty`     | 200 with empty content                              | `ask`: another try     |
| `truncated` | 200 with half the answer, `finish_reason: length`   | `ask`: another try     |
| `schema`    | 200 with valid JSON that breaks the requested schema | `ask`: another try    |

So every fault goes through the production retry paths (the backend's bounded, backed-off
transport retries; `ask`'s bounded answer retries), and what still fails becomes a Failure record
with the stage, the error and the last raw output. Nothing here is used by a normal run.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from typing import Any

import httpx

from schemas.records import Message
from simulators.llm.base import ChatModel, Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.errors import ModelOutputError
from simulators.llm.openai_backend import OpenAIChatModel

FAULTS = ("429", "5xx", "timeout", "drop", "empty", "truncated", "schema")
TRANSPORT_FAULTS = frozenset({"429", "5xx", "timeout", "drop"})
SCHEMA_BREAKER = '{"unexpected": "field"}'
"""Valid JSON that fits none of agentmill's answer schemas (they name their required keys)."""


class ChatModelTransport(httpx.AsyncBaseTransport):
    """An OpenAI `/chat/completions` endpoint served by `model`, in process (JSON mode only)."""

    def __init__(self, model: ChatModel) -> None:
        self.model = model
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        self.requests += 1
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
        sampling = Sampling(
            temperature=body.get("temperature", 0.7),
            top_p=body.get("top_p", 0.95),
            max_tokens=body.get("max_tokens", 256),
            seed=body.get("seed"),
        )
        messages = [Message(role=m["role"], content=m.get("content")) for m in body["messages"]]
        try:
            completion = await self.model.complete(
                messages, response_schema=schema, sampling=sampling
            )
            text, finish = completion.text, completion.finish_reason
            usage = [completion.prompt_tokens, completion.completion_tokens]
        except ModelOutputError as exc:  # the model's own bad answer goes out as it was
            text, finish, usage = exc.raw_output, "stop", [0, 0]
        answer = {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]},
        }
        return httpx.Response(200, json=answer)


class FaultyTransport(httpx.AsyncBaseTransport):
    """Wraps another transport and injects each fault in `rates` with its probability.

    `injected` counts what was injected, per fault, so a test can check each kind happened.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        rates: dict[str, float],
        seed: int = 0,
        retry_after_s: float = 0.0,
    ) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {sum(rates.values()):.2f}, more than 1")
        self.inner = inner
        self.rates = dict(rates)
        self.retry_after_s = retry_after_s
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _pick(self) -> str | None:
        with self._lock:
            draw = self._rng.random()
        for fault, rate in self.rates.items():
            if draw < rate:
                return fault
            draw -= rate
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self._pick()
        if fault is not None:
            self.injected[fault] += 1
        if fault == "429":
            headers = {"Retry-After": f"{self.retry_after_s:g}"}
            return httpx.Response(429, headers=headers, json={"error": "rate limited"})
        if fault == "5xx":
            echoed = request.headers.get("authorization", "")
            return httpx.Response(503, json={"error": f"overloaded (request: {echoed})"})
        if fault == "timeout":
            raise httpx.ReadTimeout("injected read timeout", request=request)
        if fault == "drop":
            raise httpx.RemoteProtocolError("injected: connection closed mid-answer",
                                            request=request)
        response = await self.inner.handle_async_request(request)
        if fault is None:
            return response
        data = json.loads(await response.aread())
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
        if fault == "empty":
            choice["message"]["content"] = ""
        elif fault == "truncated":
            choice["message"]["content"] = text[: len(text) // 2]
            choice["finish_reason"] = "length"
        else:  # schema
            choice["message"]["content"] = SCHEMA_BREAKER
        return httpx.Response(200, json=data)


def even_rates(rate: float, faults: tuple[str, ...] = FAULTS) -> dict[str, float]:
    """`rate` split evenly over `faults`."""
    return {fault: rate / len(faults) for fault in faults}


def faulty_model(
    inner: ChatModel,
    rate: float | dict[str, float] = 0.2,
    *,
    seed: int = 0,
    name: str = "faulty",
    api_key: str | None = None,
    max_retries: int = 4,
    backoff_s: float = 0.001,
    max_in_flight: int = 64,
) -> Any:
    """The `openai` backend talking to `inner` through a FaultyTransport.

    `rate` is a total split evenly over every fault, or a rate per fault. Backoff is scaled down
    (`backoff_s`) so tests stay fast; the retry logic is the backend's own.
    """
    rates = even_rates(rate) if isinstance(rate, float | int) else rate
    transport = FaultyTransport(ChatModelTransport(inner), rates, seed, retry_after_s=backoff_s)
    config = ModelConfig(
        backend="openai",
        model=name,
        base_url="http://faults.invalid/v1",
        api_key=api_key,
        max_retries=max_retries,
        max_in_flight=max_in_flight,
    )
    model = OpenAIChatModel(
        config, backoff_base_s=backoff_s, backoff_max_s=backoff_s * 10, transport=transport
    )
    model.faults = transport  # type: ignore[attr-defined]
    return model
