"""Constrained-JSON tool calls: the schema, the parsing, the plain-turn rendering."""

from __future__ import annotations

import asyncio
import json
import random

import jsonschema
import pytest

from schemas.records import FunctionCall, Message, ToolCall
from simulators.llm.errors import ModelOutputError
from simulators.llm.scripted import ScriptedModel, schema_instance
from simulators.llm.toolcall import (
    agent_output_schema,
    bound_schema,
    parse_agent_output,
    prose,
    render_tools,
    to_plain_messages,
)
from tests.helpers import TOOLS

OPENAI_TOOLS = [t.openai_tool() for t in TOOLS]


def test_schema_admits_calls_to_offered_tools_only() -> None:
    schema = agent_output_schema(OPENAI_TOOLS)
    good = {"tool_calls": [{"name": "get_booking", "arguments": {"booking_id": "B1"}}]}
    jsonschema.validate(good, schema)
    jsonschema.validate({"content": "hi", "final": False}, schema)
    for bad in (
        {"tool_calls": [{"name": "delete_everything", "arguments": {}}]},
        {"tool_calls": [{"name": "get_booking", "arguments": {}}]},  # required arg missing
        {"tool_calls": []},
        {"content": "hi"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_generated_answers_always_parse() -> None:
    schema = agent_output_schema(OPENAI_TOOLS)
    for seed in range(50):
        value = schema_instance(schema, random.Random(seed))
        jsonschema.validate(value, schema)
        content, calls, _, _ = parse_agent_output(json.dumps(value), "salt")
        assert (content is None) == bool(calls)
        for call in calls:
            assert call.function.name in {t.name for t in TOOLS}
            assert call.id.startswith("call_")


def test_parse_rejects_garbage_with_raw_output() -> None:
    for text in ("not json", "[1, 2]", '{"tool_calls": []}', '{"something": 1}'):
        with pytest.raises(ModelOutputError) as info:
            parse_agent_output(text, "s")
        assert info.value.raw_output == text


def test_call_ids_are_stable_and_distinct() -> None:
    text = json.dumps(
        {"tool_calls": [{"name": "a", "arguments": {}}, {"name": "a", "arguments": {}}]}
    )
    _, first, _, _ = parse_agent_output(text, "x")
    _, again, _, _ = parse_agent_output(text, "x")
    assert [c.id for c in first] == [c.id for c in again]
    assert first[0].id != first[1].id


def test_bound_schema_limits_strings_and_arrays_but_not_property_names() -> None:
    schema = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},  # a property *named* type
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 6},
            "code": {"type": "string", "pattern": "^[A-Z]+$"},
            "kind": {"enum": ["a", "b"]},
            "long": {"type": "string", "minLength": 50},
            "set": {"type": "array", "uniqueItems": True, "items": {"type": "integer"}},
            "fixed": {"const": {"type": "string"}},
            "zip": {"type": "string", "pattern": "^[0-9]+$", "maxLength": 5},
        },
    }
    bounded = bound_schema(schema, max_string=20, max_items=3)
    props = bounded["properties"]
    assert props["type"] == {"type": "string", "maxLength": 20}
    assert props["tags"]["maxItems"] == 6  # never below minItems
    assert props["tags"]["items"]["maxLength"] == 20
    assert "maxLength" not in props["code"]  # xgrammar refuses pattern with a length
    assert props["kind"] == {"enum": ["a", "b"]}
    assert props["long"]["maxLength"] == 50  # never below minLength
    assert "uniqueItems" not in props["set"]  # xgrammar refuses it
    assert props["fixed"] == {"const": {"type": "string"}}  # literals are not schemas
    assert props["zip"] == {"type": "string", "pattern": "^[0-9]+$"}
    count = bound_schema({"type": "integer", "minimum": 1})
    assert count["minimum"] == 1 and count["maximum"] >= 10**6
    assert schema["properties"]["type"] == {"type": "string"}  # original untouched


def test_plain_messages_carry_tools_calls_and_results() -> None:
    call = ToolCall(
        id="c1", function=FunctionCall(name="get_booking", arguments='{"booking_id":"B"}')
    )
    messages = [
        Message(role="system", content="Be helpful."),
        Message(role="user", content="Status of B?"),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", tool_call_id="c1", name="get_booking", content='{"status":"ok"}'),
    ]
    plain = to_plain_messages(messages, OPENAI_TOOLS)
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user"]
    assert plain[0]["content"].startswith("Be helpful.")
    assert render_tools(OPENAI_TOOLS) in plain[0]["content"]
    assert json.loads(plain[2]["content"]) == {
        "tool_calls": [{"name": "get_booking", "arguments": {"booking_id": "B"}}]
    }
    assert "get_booking" in plain[3]["content"] and '{"status":"ok"}' in plain[3]["content"]


def test_consecutive_tool_results_merge_into_one_turn() -> None:
    calls = [
        ToolCall(id=f"c{i}", function=FunctionCall(name="get_booking", arguments="{}"))
        for i in range(2)
    ]
    messages = [
        Message(role="user", content="hi"),
        Message(role="assistant", tool_calls=calls),
        Message(role="tool", tool_call_id="c0", content="a"),
        Message(role="tool", tool_call_id="c1", content="b"),
    ]
    plain = to_plain_messages(messages, None)
    assert [m["role"] for m in plain] == ["user", "assistant", "user"]


def test_truncated_constrained_answer_is_an_output_error() -> None:
    class Truncating(ScriptedModel):
        async def generate(self, messages, schema, sampling):
            raw = await super().generate(messages, schema, sampling)
            raw.finish_reason = "length"
            return raw

    model = Truncating(['{"content": "cut'])
    with pytest.raises(ModelOutputError, match="truncated"):
        asyncio.run(
            model.complete([Message(role="user", content="x")], response_schema={"type": "object"})
        )


def test_generation_bounds_reach_the_constraint_only_when_configured() -> None:
    from simulators.llm.config import EMBEDDED_MODEL, ModelConfig

    assert ModelConfig(model=EMBEDDED_MODEL).generation_bounds() == (120, 4)
    assert ModelConfig(backend="openai", model="big").generation_bounds() == (None, None)
    assert ModelConfig(model="big", max_string_chars=50).generation_bounds() == (50, None)

    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    plain = ScriptedModel([{"text": "a"}])
    asyncio.run(plain.complete([Message(role="user", content="x")], response_schema=schema))
    assert plain.requests[0].schema == schema
    bounded = ScriptedModel([{"text": "a"}])
    bounded.bound_strings = 10
    asyncio.run(bounded.complete([Message(role="user", content="x")], response_schema=schema))
    assert bounded.requests[0].schema["properties"]["text"]["maxLength"] == 10


def test_prose_is_capped_only_when_asked() -> None:
    schema = {"type": "object", "properties": {"content": prose(), "tag": {"type": "string"}}}
    free = bound_schema(schema, max_string=20, max_items=3)
    assert "maxLength" not in free["properties"]["content"]
    assert free["properties"]["tag"]["maxLength"] == 20
    capped = bound_schema(schema, max_string=20, max_items=3, max_prose=96)
    assert capped["properties"]["content"] == {"type": "string", "maxLength": 96}
