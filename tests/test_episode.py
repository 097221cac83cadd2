"""The episode loop and its roles, on the scripted backend."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from schemas.records import FunctionCall, ToolCall
from simulators.episode import EpisodeConfig, EpisodeError, RoleClients, run_episode
from simulators.llm.base import Sampling
from simulators.persona import make_persona
from simulators.tool_simulator import ToolSimulator
from tests import helpers
from tests.helpers import BOOK, SEARCH, agent_calls, agent_reply, role_model


def play(handlers: dict, config: EpisodeConfig | None = None, seed: int = 7):
    model = role_model(handlers)
    spec = helpers.agent()
    task = helpers.task(spec)
    models = RoleClients(user=model, agent=model, tool=model)
    return asyncio.run(
        run_episode(
            task, spec, make_persona("p"), models, config or EpisodeConfig(failure_rate=0.0), seed
        )
    ), model


def scripted_agent(*answers: str):
    queue = list(answers)
    return lambda request: queue.pop(0)


def test_episode_with_chained_tool_calls_ends_when_agent_is_final() -> None:
    agent = scripted_agent(
        agent_calls(("search_flights", {"origin": "SFO", "destination": "JFK"})),
        agent_calls(("book_flight", {"flight_id": "F1", "passenger": "Ada"})),
        agent_reply("Booked: B42.", final=True),
    )
    trajectory, _ = play(
        {
            "user": lambda r: {"message": "Book me SFO to JFK please."},
            "agent": agent,
            "tool": lambda r: (
                {"result": {"booking_id": "B42", "status": "confirmed"},
                 "state_changes": [{"key": "booking_B42", "value": "confirmed"}]}
                if "book_flight(" in r.last
                else {"result": {"flights": [{"flight_id": "F1", "price": 99.0}]}}
            ),
        },
        EpisodeConfig(user_ends=False, failure_rate=0.0),
    )
    roles = [m.role for m in trajectory.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert trajectory.end_reason == "agent_final"
    booking = {"booking_id": "B42", "flight_id": "F1", "passenger": "Ada", "status": "confirmed"}
    assert trajectory.final_state == {
        "account": "ada", "booking_B42": "confirmed", "bookings": {"B42": booking}
    }
    call = trajectory.messages[2].tool_calls[0]
    answer = trajectory.messages[3]
    assert answer.tool_call_id == call.id and answer.name == "search_flights"
    jsonschema.validate(json.loads(answer.content), SEARCH.returns)
    assert set(trajectory.token_counts) == {"user", "agent", "tool"}
    assert trajectory.token_counts["agent"].requests == 3


def test_invalid_arguments_get_an_api_error_without_asking_the_model() -> None:
    asked_tool = []
    agent = scripted_agent(
        agent_calls(("book_flight", {"flight_id": "F1"})),  # passenger missing
        agent_reply("I need your name.", final=True),
    )
    trajectory, _ = play(
        {
            "user": lambda r: {"message": "Book F1."},
            "agent": agent,
            "tool": lambda r: asked_tool.append(r) or {"result": {}},
        },
        EpisodeConfig(user_ends=False),
    )
    error = json.loads(trajectory.messages[3].content)["error"]
    assert error["code"] == 400 and error["type"] == "invalid_arguments"
    assert "passenger" in error["message"]
    assert asked_tool == []


def test_user_stop_and_turn_limit_are_recorded() -> None:
    trajectory, _ = play(
        {
            "user": lambda r: {"message": "Thanks, bye", "done": True}
            if r.schema and "done" in r.schema["properties"]
            else {"message": "Hi, any flights?"},
            "agent": lambda r: agent_reply("Where to?"),
        }
    )
    assert trajectory.end_reason == "user_stop"
    assert trajectory.messages[-1].role == "assistant"

    trajectory, _ = play(
        {
            "user": lambda r: {"message": "More please", "done": False}
            if r.schema and "done" in r.schema["properties"]
            else {"message": "Hi"},
            "agent": lambda r: agent_reply("Sure."),
        },
        EpisodeConfig(max_turns=2),
    )
    assert trajectory.end_reason == "turn_limit"
    assert trajectory.turns == 2
    assert [m.role for m in trajectory.messages].count("user") == 2


def test_agent_must_reply_after_max_tool_rounds() -> None:
    calls = agent_calls(("search_flights", {"origin": "SFO", "destination": "JFK"}))

    def agent(request):
        if request.schema and "tool_calls" in json.dumps(request.schema):
            return calls
        return {"content": "Here are the flights.", "final": True}

    trajectory, _ = play(
        {"user": lambda r: {"message": "Find flights"}, "agent": agent},
        EpisodeConfig(max_tool_rounds=2, user_ends=False),
    )
    assert sum(1 for m in trajectory.messages if m.tool_calls) == 2
    assert trajectory.messages[-1].content == "Here are the flights."


def test_unparseable_answers_are_retried_then_fail_with_raw_output() -> None:
    attempts = []

    def agent(request):
        attempts.append(request.sampling.seed)
        return "this is not json"

    with pytest.raises(EpisodeError) as info:
        play({"user": lambda r: {"message": "hi"}, "agent": agent}, EpisodeConfig(attempts=3))
    assert len(attempts) == 3 and len(set(attempts)) == 3
    assert info.value.role == "agent"
    assert info.value.raw_output == "this is not json"
    assert info.value.usage["agent"].requests == 3


def test_retry_recovers_from_one_bad_answer() -> None:
    answers = ["{broken", agent_reply("Hello!", final=True)]
    trajectory, _ = play(
        {"user": lambda r: {"message": "hi"}, "agent": scripted_agent(*answers)},
        EpisodeConfig(user_ends=False),
    )
    assert trajectory.messages[-1].content == "Hello!"


def test_tool_result_breaking_returns_schema_is_retried() -> None:
    answers = [{"result": {"flights": "none"}}, {"result": {"flights": []}}]
    model = role_model({"tool": lambda r: answers.pop(0)})
    simulator = ToolSimulator(model, [SEARCH, BOOK], {}, Sampling(seed=1))
    call = ToolCall(
        id="call_1",
        function=FunctionCall(name="search_flights", arguments='{"origin":"A","destination":"B"}'),
    )
    message = asyncio.run(simulator.answer(call, {}))
    assert json.loads(message.content) == {"flights": []}
    assert answers == []


def test_unknown_tool_and_bad_json_arguments() -> None:
    simulator = ToolSimulator(role_model({}), [SEARCH], {}, Sampling(seed=1))
    unknown = ToolCall(id="c1", function=FunctionCall(name="nope", arguments="{}"))
    broken = ToolCall(id="c2", function=FunctionCall(name="search_flights", arguments="{oops"))
    assert json.loads(asyncio.run(simulator.answer(unknown, {})).content)["error"]["code"] == 404
    body = json.loads(asyncio.run(simulator.answer(broken, {})).content)
    assert body["error"]["type"] == "invalid_json"


def test_same_seed_same_episode() -> None:
    def handlers():
        return {
            "user": lambda r: {"message": "bye", "done": True}
            if "done" in r.schema["properties"]
            else {"message": "hi"}
        }

    first, _ = play(handlers(), seed=3)
    second, _ = play(handlers(), seed=3)
    assert first.id == second.id
    assert make_persona("x") == make_persona("x")
    assert make_persona("x") != make_persona("y")


def test_agent_prompt_prefix_is_identical_across_turns() -> None:
    agent = scripted_agent(
        agent_calls(("search_flights", {"origin": "SFO", "destination": "JFK"})),
        agent_reply("Found one.", final=True),
    )
    _, model = play(
        {"user": lambda r: {"message": "Find flights"}, "agent": agent},
        EpisodeConfig(user_ends=False, failure_rate=0.0),
    )
    agent_requests = [r for r in model.requests if helpers.role_of(r) == "agent"]
    assert len(agent_requests) == 2
    first, second = (r.messages[0]["content"] for r in agent_requests)
    assert first == second and "search_flights" in first
