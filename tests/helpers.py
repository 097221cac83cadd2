"""Shared builders for unit tests: small tools, agents, tasks and a role-aware scripted model."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.records import AgentSpec, Rubric, Task, ToolSpec, Trajectory
from simulators.episode import EpisodeConfig, RoleClients, run_episode
from simulators.llm.scripted import ScriptedModel, ScriptRequest, schema_instance
from simulators.persona import make_persona
from toolspecs.domain import load_domain

SEARCH = ToolSpec(
    name="search_flights",
    description="Find flights between two airports on a date; returns flight ids and prices.",
    parameters={
        "type": "object",
        "properties": {
            "origin": {"type": "string", "description": "IATA code"},
            "destination": {"type": "string", "description": "IATA code"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["origin", "destination"],
        "additionalProperties": False,
    },
    returns={
        "type": "object",
        "properties": {
            "flights": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "flight_id": {"type": "string"},
                        "price": {"type": "number"},
                    },
                    "required": ["flight_id", "price"],
                },
            }
        },
        "required": ["flights"],
        "additionalProperties": False,
    },
    domain="travel",
)
BOOK = ToolSpec(
    name="book_flight",
    description="Book a flight by its id for a passenger; returns the booking id.",
    parameters={
        "type": "object",
        "properties": {"flight_id": {"type": "string"}, "passenger": {"type": "string"}},
        "required": ["flight_id", "passenger"],
        "additionalProperties": False,
    },
    returns={
        "type": "object",
        "properties": {"booking_id": {"type": "string"}, "status": {"enum": ["confirmed"]}},
        "required": ["booking_id", "status"],
        "additionalProperties": False,
    },
    domain="travel",
    side_effect="write",
)
STATUS = ToolSpec(
    name="get_booking",
    description="Look up a booking by id; returns its status.",
    parameters={
        "type": "object",
        "properties": {"booking_id": {"type": "string"}},
        "required": ["booking_id"],
    },
    returns={
        "type": "object",
        "properties": {"status": {"type": "string"}},
        "required": ["status"],
    },
    domain="travel",
)
TOOLS = [SEARCH, BOOK, STATUS]


# Two tools in OpenAI function form, for the model backends' own tests.
OPENAI_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "book_table",
            "description": "Book a restaurant table.",
            "parameters": {
                "type": "object",
                "properties": {
                    "restaurant": {"type": "string"},
                    "people": {"type": "integer", "minimum": 1, "maximum": 20},
                },
                "required": ["restaurant", "people"],
            },
        },
    },
]


def agent(tools: list[ToolSpec] | None = None) -> AgentSpec:
    tools = tools or TOOLS
    return AgentSpec(
        name="Skyline",
        domain="travel",
        system_prompt="You are Skyline, a travel assistant.",
        tool_ids=[t.id for t in tools],
        tools=tools,
        policy="Confirm before booking.",
    )


def task(agent_spec: AgentSpec | None = None) -> Task:
    agent_spec = agent_spec or agent()
    return Task(
        agent_id=agent_spec.id,
        goal="Book the cheapest flight from SFO to JFK.",
        user_knows=["origin SFO", "destination JFK"],
        user_withholds=["passenger name is Ada Lovelace"],
        difficulty="hard",
        rubric=Rubric(
            success_criteria=["A flight is booked", "The agent confirms the booking id"],
            expected_tools=["search_flights", "book_flight"],
        ),
        initial_state={"account": "ada"},
    )


Responder = Callable[[ScriptRequest], Any]


def role_of(request: ScriptRequest) -> str:
    """Which role a request comes from, read off its system prompt."""
    system = request.system
    if system.startswith("You are role-playing a human user"):
        return "user"
    if system.startswith("You simulate a software tool"):
        return "tool"
    if "strict" in system.lower() and "grader" in system.lower():
        return "judge"
    if system.startswith("You design AI assistants") or system.startswith("You write test tasks"):
        return "synthesizer"
    return "agent"


def role_model(handlers: dict[str, Responder], seed: int = 0) -> ScriptedModel:
    """A scripted model that answers each role with its handler, else a schema-valid value."""
    rng = random.Random(seed)

    def respond(request: ScriptRequest) -> Any:
        handler = handlers.get(role_of(request))
        if handler is not None:
            return handler(request)
        return schema_instance(request.schema or {"type": "string"}, rng)

    return ScriptedModel(respond)


def agent_calls(*calls: tuple[str, dict[str, Any]]) -> str:
    return json.dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in calls]})


def agent_reply(text: str, final: bool = False) -> str:
    return json.dumps({"content": text, "final": final})


def play_domain_task(
    folder: Path, agent_turns: list[str], *, asks: str, thanks: str, task_index: int = 0,
    tool: Responder | None = None, persona: str = "p", config: EpisodeConfig | None = None,
    seed: int = 1,
) -> tuple[Trajectory, Task]:
    """One episode of a domain's task with the agent's turns given in order and a user who asks
    once and thanks when asked whether it is done: the reward tests' shared setting."""
    domain = load_domain(folder)
    task = domain.tasks[task_index]
    queue = list(agent_turns)
    handlers: dict[str, Responder] = {
        "agent": lambda r: queue.pop(0),
        "user": lambda r: {"message": thanks, "done": True}
        if "done" in r.schema["properties"] else {"message": asks},
    }
    if tool is not None:
        handlers["tool"] = tool
    model = role_model(handlers)
    trajectory = asyncio.run(run_episode(
        task, domain.agent, make_persona(persona), RoleClients(user=model, agent=model, tool=model),
        config or EpisodeConfig(failure_rate=0.0), seed,
    ))
    return trajectory, task
