"""Each deterministic check fires on the defect it exists for, and on nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest

from filters.checks import CHECKS, CheckContext, offered_tools, run_checks
from schemas.records import (
    FunctionCall,
    InjectedFault,
    Message,
    ToolCall,
    ToolSpec,
    Trajectory,
)

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"enum": ["C", "F"]},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
)
BOOK = ToolSpec(
    name="book_table",
    description="Book a restaurant table.",
    parameters={
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"people": {"type": "integer", "minimum": 1}},
        "required": ["people"],
        "dependencies": {"time": ["date"]},
    },
    side_effect="write",
)
TOOLS = [WEATHER, BOOK]


def call(call_id: str, name: str, arguments: Any) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=text))


def calls(*tool_calls: ToolCall) -> Message:
    return Message(role="assistant", tool_calls=list(tool_calls))


def answer(call_id: str, content: str = '{"ok": true}', name: str = "get_weather") -> Message:
    return Message(role="tool", tool_call_id=call_id, name=name, content=content)


def say(role: str, content: str | None) -> Message:
    return Message(role=role, content=content)  # type: ignore[arg-type]


def good_messages() -> list[Message]:
    return [
        say("system", "You are a helpful concierge."),
        say("user", "What's the weather in Paris? And book for 2."),
        calls(
            call("call_1", "get_weather", {"city": "Paris"}),
            call("call_2", "book_table", {"people": 2}),
        ),
        answer("call_1", '{"temp": 18}'),
        answer("call_2", '{"booked": true}', name="book_table"),
        say("assistant", "It is 18°C in Paris, and your table for 2 is booked."),
        say("user", "And in Lyon, in F?"),
        calls(call("call_3", "get_weather", {"city": "Lyon", "unit": "F"})),
        answer("call_3", '{"temp": 66}'),
        say("assistant", "66°F in Lyon."),
    ]


def trajectory(messages: list[Message]) -> Trajectory:
    return Trajectory(
        task_id="task_1",
        agent_id="agent_1",
        persona_id="persona_1",
        domain="travel",
        messages=messages,
        tools=[tool.openai_tool() for tool in TOOLS],
        end_reason="agent_final",
    )


def replace(messages: list[Message], index: int, *new: Message) -> list[Message]:
    return [*messages[:index], *new, *messages[index + 1 :]]


def drop(messages: list[Message], index: int) -> list[Message]:
    return [*messages[:index], *messages[index + 1 :]]


def test_good_trajectory_passes() -> None:
    assert run_checks(trajectory(good_messages()), TOOLS, max_turns=2) == []


def test_tools_accepted_as_mapping_or_rebuilt_from_trajectory() -> None:
    traj = trajectory(good_messages())
    assert run_checks(traj, {tool.name: tool for tool in TOOLS}, max_turns=2) == []
    assert run_checks(traj, None, max_turns=2) == []
    assert set(offered_tools(traj)) == {"get_weather", "book_table"}


def _loop() -> list[Message]:
    same = [
        m
        for i in range(3)
        for m in (calls(call(f"call_l{i}", "get_weather", {"city": "Rome"})), answer(f"call_l{i}"))
    ]
    return [*good_messages()[:2], *same, say("assistant", "Rome is sunny.")]


G = good_messages()
BAD: dict[str, tuple[list[Message], str]] = {
    "unknown tool": (
        replace(G, 7, calls(call("call_3", "get_forecast", {"city": "Lyon"}))),
        "unknown_tool: call_3 names 'get_forecast', not offered",
    ),
    "arguments not JSON": (
        replace(G, 7, calls(call("call_3", "get_weather", "{city: Lyon"))),
        "invalid_arguments: call_3 arguments are not JSON",
    ),
    "arguments not an object": (
        replace(G, 7, calls(call("call_3", "get_weather", ["Lyon"]))),
        "invalid_arguments: call_3 arguments are not a JSON object",
    ),
    "missing required argument": (
        replace(G, 7, calls(call("call_3", "get_weather", {"unit": "F"}))),
        "invalid_arguments: call_3 to 'get_weather'",
    ),
    "argument outside enum": (
        replace(G, 7, calls(call("call_3", "get_weather", {"city": "Lyon", "unit": "K"}))),
        "invalid_arguments: call_3 to 'get_weather' at '$.unit'",
    ),
    "extra argument": (
        replace(G, 7, calls(call("call_3", "get_weather", {"city": "Lyon", "when": "now"}))),
        "invalid_arguments: call_3",
    ),
    "draft-07 schema: minimum": (
        replace(
            G,
            2,
            calls(
                call("call_1", "get_weather", {"city": "Paris"}),
                call("call_2", "book_table", {"people": 0}),
            ),
        ),
        "invalid_arguments: call_2 to 'book_table' at '$.people'",
    ),
    "draft-07 schema: dependencies": (
        replace(
            G,
            2,
            calls(
                call("call_1", "get_weather", {"city": "Paris"}),
                call("call_2", "book_table", {"people": 2, "time": "19:00"}),
            ),
        ),
        "invalid_arguments: call_2 to 'book_table'",
    ),
    "unanswered call": (drop(G, 4), "unanswered_call: call_2 (book_table) has no tool answer"),
    "answered twice": (
        replace(G, 8, answer("call_3"), answer("call_3")),
        "duplicate_answer: call_3 is answered more than once",
    ),
    "orphan tool result": (
        replace(G, 8, answer("call_3"), answer("call_9")),
        "orphan_tool_result: message 9 answers 'call_9'",
    ),
    "answer before its call": (
        [*G[:2], answer("call_1"), *G[2:3], *G[4:]],
        "orphan_tool_result: message 2 answers 'call_1'",
    ),
    "answer after a later turn": (
        [*G[:4], say("assistant", "One moment."), *G[4:]],
        "late_answer: call_2",
    ),
    "reused call id": (
        replace(
            replace(G, 8, answer("call_1")),
            7,
            calls(call("call_1", "get_weather", {"city": "Lyon"})),
        ),
        "duplicate_call_id: call_1",
    ),
    "empty assistant turn": (
        replace(G, 5, say("assistant", None)),
        "empty_turn: assistant message 5",
    ),
    "whitespace assistant turn": (
        replace(G, 5, say("assistant", "  \n ")),
        "empty_turn: assistant message 5",
    ),
    "call loop": (_loop(), "repeated_call: 'get_weather' called 3 times"),
    "too many user turns": (
        [*G, say("user", "Thanks!"), say("assistant", "You're welcome.")],
        "turn_limit: 3 user turns, more than 2",
    ),
    "ends with a user message": (G[:-3], "no_final_answer: the conversation ends with a user"),
    "ends with a tool message": (G[:-1], "no_final_answer: the conversation ends with a tool"),
    "no system message": (G[1:], "bad_opening: starts with user then assistant"),
    "assistant before user": (
        [G[0], say("assistant", "Hi!"), *G[1:]],
        "bad_opening: starts with system then assistant",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_check_fires(case: str) -> None:
    messages, expected = BAD[case]
    failures = run_checks(trajectory(messages), TOOLS, max_turns=2)
    assert any(f.startswith(expected) for f in failures), failures


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_only_its_own_kind_fires(case: str) -> None:
    """Each defect is reported under its own code and does not set off unrelated checks."""
    messages, expected = BAD[case]
    code = expected.split(":")[0]
    related = {
        "orphan_tool_result": {"unanswered_call"},  # the answer before the call answers nothing
        # the id's first call owns both answers, and the second arrives late
        "duplicate_call_id": {"late_answer", "duplicate_answer"},
    }.get(code, set())
    codes = {f.split(":")[0] for f in run_checks(trajectory(messages), TOOLS, max_turns=2)}
    assert codes - related == {code}


def test_repeat_threshold_is_a_parameter() -> None:
    traj = trajectory(_loop())
    assert run_checks(traj, TOOLS, max_turns=2, repeat_threshold=4) == []
    assert run_checks(traj, TOOLS, max_turns=2, repeat_threshold=2) != []
    # two identical calls are a normal retry
    twice = [*_loop()[:6], _loop()[-1]]
    assert run_checks(trajectory(twice), TOOLS, max_turns=2) == []


def _loop_answered(content: str) -> list[Message]:
    """Three identical weather calls, each answered with `content`."""
    same = [
        m
        for i in range(3)
        for m in (
            calls(call(f"call_l{i}", "get_weather", {"city": "Rome"})),
            answer(f"call_l{i}", content),
        )
    ]
    return [*good_messages()[:2], *same, say("assistant", "Rome is sunny.")]


def test_retries_after_a_transient_error_are_not_a_loop() -> None:
    """429/503/504 invite a retry; any other answer (an error included) settles the call."""
    for code, loops in [(429, False), (503, False), (504, False), (404, True), (400, True)]:
        body = json.dumps({"error": {"code": code, "type": "x", "message": "x"}})
        failures = run_checks(trajectory(_loop_answered(body)), TOOLS, max_turns=2)
        assert any(f.startswith("repeated_call:") for f in failures) is loops, (code, failures)


def test_retries_after_an_injected_failure_are_not_a_loop() -> None:
    traj = trajectory(_loop())
    assert any(f.startswith("repeated_call:") for f in run_checks(traj, TOOLS, max_turns=2))
    # The first two answers were failures injected on purpose: the third call is the first
    # one after a real answer, so nothing repeats.
    traj.injected_faults = [
        InjectedFault(tool_call_id=f"call_l{i}", tool="get_weather", kind="not_found")
        for i in range(2)
    ]
    assert run_checks(traj, TOOLS, max_turns=2) == []


def test_argument_order_does_not_hide_a_loop() -> None:
    messages = [*G[:2]]
    for i, args in enumerate(['{"city":"Rome","unit":"C"}', '{"unit":"C","city":"Rome"}'] * 2):
        messages += [calls(call(f"call_{i}", "get_weather", args)), answer(f"call_{i}")]
    failures = run_checks(trajectory([*messages, say("assistant", "ok")]), TOOLS, max_turns=2)
    assert failures == [failures[0]] and failures[0].startswith(
        "repeated_call: 'get_weather' called 4"
    )


def test_invalid_tool_schema_is_reported_not_raised() -> None:
    broken = ToolSpec(name="get_weather", description="x", parameters={"type": "nonsense"})
    failures = run_checks(trajectory(G), [broken, BOOK], max_turns=2)
    assert failures and all("has an invalid schema" in f for f in failures)


def test_checks_are_pluggable() -> None:
    def no_apologies(traj: Trajectory, ctx: CheckContext) -> list[str]:
        return [
            f"apology: message {i}"
            for i, m in enumerate(traj.messages)
            if m.role == "assistant" and "sorry" in (m.content or "").lower()
        ]

    messages = replace(G, 9, say("assistant", "Sorry, 66°F."))
    assert run_checks(trajectory(messages), TOOLS, max_turns=2) == []
    failures = run_checks(trajectory(messages), TOOLS, 2, checks=[*CHECKS, no_apologies])
    assert failures == ["apology: message 9"]


def test_empty_conversation() -> None:
    failures = run_checks(trajectory([]), TOOLS, max_turns=2)
    assert {f.split(":")[0] for f in failures} == {"bad_opening", "no_final_answer"}
