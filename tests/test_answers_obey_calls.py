"""Tool answers agree with their own calls and with what was answered before.

A search with `max_price_usd=100` must not answer with $446 listings (even ones the world holds
and copies in by id), and the same enrolment asked twice must not answer enrolled, then
rejected. The tool model is scripted to make exactly those mistakes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from filters.checks import answers_obey_calls, consistent_repeats, run_checks
from schemas.records import FunctionCall, InjectedFault, Message, ToolCall, ToolSpec, Trajectory
from simulators.constraints import constraints, contradictions, obeying
from simulators.llm.base import Sampling
from simulators.llm.scripted import ScriptedModel
from simulators.tool_simulator import ToolSimulator

SEARCH = ToolSpec(
    name="search_listings",
    description="Search rental listings in a city, cheapest first.",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "max_price_usd": {"type": "number"},
            "property_type": {"enum": ["house", "apartment"]},
            "limit": {"type": "integer", "minimum": 1},
        },
        "required": ["city"],
    },
    returns={
        "type": "object",
        "properties": {
            "listings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "listing_id": {"type": "string"},
                        "city": {"type": "string"},
                        "price": {"type": "number"},
                        "property_type": {"type": "string"},
                    },
                    "required": ["listing_id", "price"],
                },
            }
        },
        "required": ["listings"],
    },
    domain="real_estate",
)
ENROLL = ToolSpec(
    name="enroll_in_course",
    description="Enroll the student in a course; returns the enrollment.",
    parameters={
        "type": "object",
        "properties": {"course_id": {"type": "string"}},
        "required": ["course_id"],
    },
    returns={
        "type": "object",
        "properties": {"course_id": {"type": "string"}, "status": {"type": "string"}},
        "required": ["course_id", "status"],
    },
    domain="education",
    side_effect="write",
)
WORLD = {
    "listings": {
        "LIS-1": {"listing_id": "LIS-1", "city": "Paris", "price": 446.69,
                  "property_type": "house"},
        "LIS-2": {"listing_id": "LIS-2", "city": "Paris", "price": 214.43,
                  "property_type": "apartment"},
        "LIS-3": {"listing_id": "LIS-3", "city": "Paris", "price": 89.0, "property_type": "house"},
        "LIS-4": {"listing_id": "LIS-4", "city": "Lyon", "price": 60.0, "property_type": "house"},
    },
    "courses": {"1234567890": {"course_id": "1234567890", "status": "open"}},
}


def call(call_id: str, name: str, arguments: dict[str, Any]) -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=json.dumps(arguments)))


def simulate(tools: list[ToolSpec], answers: list[Any], calls: list[ToolCall]) -> list[Any]:
    model = ScriptedModel(answers)
    simulator = ToolSimulator(model, tools, WORLD, Sampling(seed=1))

    async def play() -> list[Any]:
        return [json.loads((await simulator.answer(c, {})).content or "") for c in calls]

    return asyncio.run(play())


def test_a_search_answers_only_records_that_fit_its_filters() -> None:
    """The model lists every listing by id (the world's prices then overwrite its own): only
    the one in Paris at most $100 may remain."""
    invented = {"result": {"listings": [
        {"listing_id": f"LIS-{i}", "city": "Paris", "price": 50.0} for i in (1, 2, 3, 4)
    ]}}
    arguments = {"city": "Paris", "max_price_usd": 100}
    [answer] = simulate([SEARCH], [invented], [call("c1", "search_listings", arguments)])
    assert [r["listing_id"] for r in answer["listings"]] == ["LIS-3"]
    assert contradictions(arguments, SEARCH.parameters, answer) == []


def test_limit_and_enum_filters_are_obeyed() -> None:
    invented = {"result": {"listings": [
        {"listing_id": f"NEW-{i}", "city": "Paris", "price": 70.0 + i,
         "property_type": "apartment" if i % 2 else "house"} for i in range(6)
    ]}}
    arguments = {"city": "paris", "property_type": "house", "limit": 2}
    [answer] = simulate([SEARCH], [invented], [call("c1", "search_listings", arguments)])
    assert [r["listing_id"] for r in answer["listings"]] == ["NEW-0", "NEW-2"]


def test_reading_of_promises_from_argument_names() -> None:
    kinds = {c.argument: (c.kind, c.stem) for c in constraints(
        {"max_price_usd": 100, "min_rating": 4, "checkin_after": "2026-01-02", "city": "Rome",
         "pets": True, "limit": 3, "query": ""}, SEARCH.parameters)}
    assert kinds == {
        "max_price_usd": ("max", "price_usd"), "min_rating": ("min", "rating"),
        "checkin_after": ("min", "checkin"), "city": ("contains", "city"),
        "pets": ("equals", "pets"), "limit": ("limit", ""),
    }
    answer = {"items": [{"price": 120, "rating": 4.5, "city": "Rome"},
                        {"price": 80, "rating": 3.0, "city": "Rome"},
                        {"price": 90, "rating": 4.9, "city": "Roma"},
                        {"name": "no price field: not judged"}]}
    problems = contradictions({"max_price_usd": 100, "min_rating": 4, "city": "rome"}, None,
                              answer)
    assert [p.split(":")[0] for p in problems] == ["record 0", "record 1", "record 2"]
    kept = obeying({"max_price_usd": 100, "min_rating": 4, "city": "rome"}, None, answer)
    assert kept == {"items": [{"name": "no price field: not judged"}]}


def trajectory(calls_and_answers: list[tuple[ToolCall, str]],
               injected: list[InjectedFault] | None = None) -> Trajectory:
    messages = [Message(role="system", content="s"), Message(role="user", content="u")]
    for tool_call, answer in calls_and_answers:
        messages.append(Message(role="assistant", tool_calls=[tool_call]))
        messages.append(Message(role="tool", tool_call_id=tool_call.id,
                                name=tool_call.function.name, content=answer))
    messages.append(Message(role="assistant", content="done"))
    return Trajectory(task_id="t", agent_id="a", persona_id="p", domain="d", messages=messages,
                      tools=[SEARCH.openai_tool(), ENROLL.openai_tool()],
                      end_reason="agent_final", injected_faults=injected or [])


def test_the_check_flags_an_answer_that_contradicts_its_call() -> None:
    search = call("c1", "search_listings", {"city": "Paris", "max_price_usd": 100})
    bad = trajectory([(search, json.dumps({"listings": [{"listing_id": "L", "price": 446.69}]}))])
    good = trajectory([(search, json.dumps({"listings": [{"listing_id": "L", "price": 89}]}))])
    failures = run_checks(bad, None, max_turns=3)
    assert any(f.startswith("answer_contradicts_call: c1") and "446.69" in f for f in failures)
    assert answers_obey_calls(good, _ctx()) == []


def _ctx() -> Any:
    from filters.checks import CheckContext, offered_tools

    return CheckContext(tools=offered_tools(trajectory([])), max_turns=3)


def test_the_same_write_twice_gets_a_consistent_answer() -> None:
    """The tool model says enrolled, then rejected: the second identical call is answered as
    the first (the enrolment exists, nothing changed it since)."""
    answers = [
        {"result": {"course_id": "1234567890", "status": "enrolled"}, "state_changes": []},
        {"result": {"course_id": "1234567890", "status": "rejected"}, "state_changes": []},
    ]
    enroll = [call(f"c{i}", "enroll_in_course", {"course_id": "1234567890"}) for i in (1, 2)]
    first, second = simulate([ENROLL], answers, enroll)
    assert first["status"] == "enrolled" and second == first


def test_a_second_identical_create_is_a_conflict() -> None:
    """A booking made twice: the first creates it, the second is told it exists (409)."""
    from tests.helpers import BOOK

    answers = [{"result": {"booking_id": "BK-1", "status": "confirmed"}, "state_changes": []}]
    book = [call(f"c{i}", "book_flight", {"flight_id": "F1", "passenger": "Ada"}) for i in (1, 2)]
    first, second = simulate([BOOK], answers, book)
    assert first == {"booking_id": "BK-1", "status": "confirmed"}
    assert second["error"]["code"] == 409 and second["error"]["existing"] == first


def test_a_repeated_read_with_no_write_between_answers_the_same() -> None:
    answers = [{"result": {"listings": [{"listing_id": "NEW-1", "city": "Paris", "price": 70}]}},
               {"result": {"listings": []}}]
    search = [call(f"c{i}", "search_listings", {"city": "Paris"}) for i in (1, 2)]
    first, second = simulate([SEARCH], answers, search)
    assert first == second and first["listings"]


def test_the_check_flags_contradictory_repeats_but_not_injected_failures() -> None:
    enroll = [call(f"c{i}", "enroll_in_course", {"course_id": "1"}) for i in (1, 2)]
    ok = json.dumps({"course_id": "1", "status": "enrolled"})
    no = json.dumps({"course_id": "1", "status": "rejected"})
    timeout = json.dumps({"error": {"code": 504, "type": "timeout", "message": "late"}})
    conflict = json.dumps({"error": {"code": 409, "type": "conflict", "message": "exists"}})
    flagged = consistent_repeats(trajectory([(enroll[0], ok), (enroll[1], no)]), _ctx())
    assert flagged and flagged[0].startswith("inconsistent_repeat: c2")
    injected = [InjectedFault(tool_call_id="c1", tool="enroll_in_course", kind="timeout")]
    assert consistent_repeats(trajectory([(enroll[0], timeout), (enroll[1], ok)], injected),
                              _ctx()) == []
    assert consistent_repeats(trajectory([(enroll[0], ok), (enroll[1], conflict)]), _ctx()) == []
