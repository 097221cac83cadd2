"""The OpenAI-compatible backend against a fake server on 127.0.0.1: no network, no model.

The fake server runs in its own thread and loop, so what it counts (concurrent requests, headers,
bodies) is what really crossed a socket.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
from aiohttp import web

from schemas.records import FunctionCall, Message, ToolCall
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.errors import ModelError
from simulators.llm.openai_backend import OpenAIChatModel, _retry_after
from simulators.llm.scripted import schema_instance
from tests.helpers import OPENAI_TOOLS as TOOLS

API_KEY = "sk-test-0123456789abcdef"

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}

class FirstChoice(random.Random):
    """Picks the first option of every anyOf, so a tool-call schema yields a tool call."""

    def choice(self, seq: Any) -> Any:
        return seq[0]


@dataclass
class FakeState:
    """What the fake server should do next, and what it saw."""

    faults: list[str] = field(default_factory=list)
    """Consumed one per request: "429", "500", "400", "401-echo", "drop", "slow", "empty"."""
    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion: native tool calls when tools are offered, else JSON obeying the schema."""
    message: dict[str, Any] = {"role": "assistant", "content": "hello"}
    finish = "stop"
    if body.get("tools"):
        name = body["tools"][0]["function"]["name"]
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps({"city": "Lyon"})},
                }
            ],
        }
        finish = "tool_calls"
    elif body.get("response_format", {}).get("type") == "json_schema":
        schema = body["response_format"]["json_schema"]["schema"]
        message["content"] = json.dumps(schema_instance(schema, FirstChoice(0)))
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def make_app(state: FakeState) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            body = await request.json()
            state.bodies.append(body)
            state.auth.append(request.headers.get("Authorization", ""))
            fault = state.faults.pop(0) if state.faults else ""
            if state.delay_s:
                await asyncio.sleep(state.delay_s)
            if fault == "429":
                return web.json_response(
                    {"error": "rate limited"}, status=429, headers={"Retry-After": "0"}
                )
            if fault == "500":
                return web.json_response({"error": "boom"}, status=500)
            if fault == "400":
                return web.json_response({"error": "bad request"}, status=400)
            if fault == "401-echo":  # a careless server echoing the credential back
                return web.Response(status=401, text=f"bad key {request.headers['Authorization']}")
            if fault == "empty":
                return web.json_response({"choices": []})
            if fault == "slow":
                await asyncio.sleep(1.0)
            if fault == "drop":
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("dropped on purpose")
            return web.json_response(answer(body))
        finally:
            state.in_flight -= 1

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeState]]:
    """The fake server on an ephemeral port, in a thread with its own loop."""
    state = FakeState()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(make_app(state), access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{holder['port']}/v1", state
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture
def fake(server: tuple[str, FakeState]) -> tuple[str, FakeState]:
    url, state = server
    state.reset()
    return url, state


def make_model(url: str, **overrides: Any) -> OpenAIChatModel:
    config = ModelConfig(
        backend="openai", model="fake-model", base_url=url, api_key=API_KEY, **overrides
    )
    return OpenAIChatModel(config, backoff_base_s=0.001, backoff_max_s=0.01)


def run(model: OpenAIChatModel, coro: Any) -> Any:
    async def main() -> Any:
        try:
            return await coro
        finally:
            await model.close()

    return asyncio.run(main())


CHAT = [
    Message(role="system", content="You are a travel agent."),
    Message(role="user", content="Plan a trip."),
]


def test_response_schema_round_trip(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    model = make_model(url)
    sampling = Sampling(temperature=0.2, top_p=0.9, max_tokens=64, seed=7)
    completion = run(model, model.complete(CHAT, response_schema=ANSWER_SCHEMA, sampling=sampling))
    jsonschema.validate(completion.parsed, ANSWER_SCHEMA)
    assert completion.parsed == json.loads(completion.text)
    assert (completion.prompt_tokens, completion.completion_tokens) == (11, 7)
    assert completion.model == "openai:fake-model"
    body = state.bodies[0]
    assert body["model"] == "fake-model"
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (
        0.2,
        0.9,
        64,
        7,
    )
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "answer" and fmt["json_schema"]["strict"] is True
    assert "tools" not in body
    assert (model.requests, model.retries) == (1, 0)


def test_tools_in_json_mode_give_tool_calls(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    model = make_model(url)
    completion = run(model, model.complete(CHAT, tools=TOOLS))
    offered = {tool["function"]["name"] for tool in TOOLS}
    assert completion.tool_calls
    assert {call.function.name for call in completion.tool_calls} <= offered
    for call in completion.tool_calls:
        assert isinstance(json.loads(call.function.arguments), dict)
    body = state.bodies[0]
    assert "tools" not in body  # json mode: tools travel in the prompt and the schema
    assert "get_weather" in body["messages"][0]["content"]
    assert body["response_format"]["json_schema"]["schema"]["anyOf"]


def test_native_mode_parses_server_tool_calls(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    model = make_model(url, tool_call_mode="native")
    history = [
        *CHAT,
        Message(
            role="assistant",
            tool_calls=[
                ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments="{}"))
            ],
        ),
        Message(role="tool", tool_call_id="call_1", name="get_weather", content='{"t": 21}'),
    ]
    completion = run(model, model.complete(history, tools=TOOLS))
    assert [(c.id, c.function.name) for c in completion.tool_calls] == [("call_abc", "get_weather")]
    assert json.loads(completion.tool_calls[0].function.arguments) == {"city": "Lyon"}
    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"
    body = state.bodies[0]
    assert body["tools"] == TOOLS
    assert "response_format" not in body
    assert body["messages"][2] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"},
            }
        ],
    }
    assert body["messages"][3]["role"] == "tool" and body["messages"][3]["tool_call_id"] == "call_1"


def test_native_mode_without_tools_uses_schema(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    model = make_model(url, tool_call_mode="native")
    completion = run(model, model.complete(CHAT, response_schema=ANSWER_SCHEMA))
    jsonschema.validate(completion.parsed, ANSWER_SCHEMA)
    assert "tools" not in state.bodies[0] and "response_format" in state.bodies[0]


@pytest.mark.parametrize(
    "faults", [["429"], ["500"], ["drop"], ["429", "500", "drop"], ["empty"], ["slow"]]
)
def test_transient_failures_are_retried(fake: tuple[str, FakeState], faults: list[str]) -> None:
    url, state = fake
    state.faults = list(faults)
    model = make_model(url, max_retries=4, timeout_s=0.3)
    completion = run(model, model.complete(CHAT, response_schema=ANSWER_SCHEMA))
    jsonschema.validate(completion.parsed, ANSWER_SCHEMA)
    assert (model.requests, model.retries) == (1, len(faults))
    assert len(state.bodies) == len(faults) + 1


def test_bad_request_is_not_retried(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    state.faults = ["400"]
    model = make_model(url)
    with pytest.raises(ModelError, match=r"HTTP 400.*bad request"):
        run(model, model.complete(CHAT))
    assert model.retries == 0 and len(state.bodies) == 1


def test_exhausted_retries_raise(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    state.faults = ["500"] * 10
    model = make_model(url, max_retries=3)
    with pytest.raises(ModelError, match=r"after 4 attempts.*HTTP 500"):
        run(model, model.complete(CHAT))
    assert model.retries == 3 and len(state.bodies) == 4


def test_empty_choices_are_retried_only_twice(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    state.faults = ["empty"] * 10
    model = make_model(url, max_retries=8)
    with pytest.raises(ModelError, match="without choices"):
        run(model, model.complete(CHAT))
    assert len(state.bodies) == 3


def test_api_key_is_sent_but_never_in_errors(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    state.faults = ["401-echo"]
    model = make_model(url)
    with pytest.raises(ModelError) as info:
        run(model, model.complete(CHAT))
    assert state.auth == [f"Bearer {API_KEY}"]
    assert "HTTP 401" in str(info.value)
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value)
    assert API_KEY not in repr(model.config)


def test_concurrency_is_bounded_by_max_in_flight(fake: tuple[str, FakeState]) -> None:
    url, state = fake
    state.delay_s = 0.05
    model = make_model(url, max_in_flight=64)

    async def many() -> list[Any]:
        return await asyncio.gather(
            *(model.complete(CHAT, response_schema=ANSWER_SCHEMA) for _ in range(300))
        )

    completions = run(model, many())
    assert len(completions) == 300 and all(c.parsed for c in completions)
    assert state.max_in_flight <= 64
    assert state.max_in_flight >= 48  # the bound is reached, not just respected
    assert len(state.bodies) == 300 and model.requests == 300 and model.retries == 0


def test_pool_is_not_capped_at_httpx_default(fake: tuple[str, FakeState]) -> None:
    """httpx pools default to 100 connections; a larger `max_in_flight` must be honoured."""
    url, state = fake
    state.delay_s = 0.2
    model = make_model(url, max_in_flight=150)

    async def many() -> list[Any]:
        return await asyncio.gather(*(model.complete(CHAT) for _ in range(150)))

    run(model, many())
    assert state.max_in_flight > 100


def test_close_is_idempotent_and_model_serves_later_loops(fake: tuple[str, FakeState]) -> None:
    """Workers may run one `asyncio.run` per bundle; the shared model must follow them."""
    url, _ = fake
    model = make_model(url)
    run(model, model.complete(CHAT))
    run(model, model.complete(CHAT))
    asyncio.run(model.close())
    assert model.requests == 2


def test_retry_after_header_forms() -> None:
    assert _retry_after("0") == 0.0 and _retry_after("2.5") == 2.5
    assert _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    model = OpenAIChatModel(ModelConfig(backend="openai"), retry_after_max_s=5.0)
    assert model._delay(1, 3600.0) == 5.0
    assert 0.25 <= model._delay(1, None) <= 0.5
