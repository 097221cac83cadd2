"""Composing agents from the tool pool and writing rubric-scored tasks for them.

Tool sets are drawn deterministically (seeded by the run seed and the slot), preferring tools
whose outputs feed another's inputs so multi-step tasks come naturally. The model writes the
agent's prompt and each task under JSON-schema constrained output.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from schemas.records import (
    STATE_CHANGES,
    AgentSpec,
    Difficulty,
    JsonObject,
    Message,
    Outcome,
    Rubric,
    Task,
    ToolSpec,
)
from simulators.ask import Usage, ask
from simulators.llm.base import ChatModel, Completion, Sampling
from simulators.values import ask_ranges
from simulators.world import (
    apply_changes,
    build_world,
    changes_to_paths,
    describe_world,
    outcome_schema,
    record_schemas,
    tool_words,
)
from toolspecs.task_gate import criterion_problem, gate, goal_problem, text_problems

DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard", "decline")
DIFFICULTY_BRIEF = {
    "easy": "a request one tool call can serve",
    "medium": "a request that needs two or three tool calls",
    "hard": "a request where a later call needs an id or value returned by an earlier call",
    "decline": "a related request that none of these tools can serve, so the assistant must "
    "say it cannot do it (and call no tool)",
}
EXPECTED_CALLS = {"easy": (1, 1), "medium": (2, 3), "hard": (2, 4)}
"""How many tool names a tier's rubric expects (min, max); `decline` expects none."""
DECLINE_CRITERION = (
    "The assistant says this is outside what it can do, calls no tool, and does not pretend "
    "to have done it."
)


def by_domain(pool: Sequence[ToolSpec]) -> dict[str, list[ToolSpec]]:
    groups: dict[str, list[ToolSpec]] = defaultdict(list)
    for spec in sorted(pool, key=lambda s: s.id):
        groups[spec.domain].append(spec)
    return dict(groups)


def _fields(schema: dict[str, Any] | None) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    names = set(schema.get("properties", {}))
    for sub in schema.get("properties", {}).values():
        if isinstance(sub, dict):
            names |= _fields(sub)
            names |= _fields(sub.get("items"))
    return names


def feeds(producer: ToolSpec, consumer: ToolSpec) -> bool:
    """Whether a field `producer` returns is an argument `consumer` takes (e.g. a booking id)."""
    return producer.name != consumer.name and bool(
        _fields(producer.returns) & set(consumer.parameters.get("properties", {}))
    )


def choose_tools(
    pool: Sequence[ToolSpec], slot: int, seed: int, min_tools: int = 3, max_tools: int = 8
) -> tuple[str, list[ToolSpec]]:
    """A coherent tool set for agent `slot`: one domain, 3-8 tools, chained where possible.

    Names are unique within the set: two spec files (or two MCP servers) may both define a
    `search`, but an agent offered both could not tell them apart, so only the first is kept.
    """
    groups = {}
    for d, candidates in by_domain(pool).items():
        named: dict[str, ToolSpec] = {}
        for tool in candidates:
            named.setdefault(tool.name, tool)
        if len(named) >= min_tools:
            groups[d] = list(named.values())
    if not groups:
        raise ValueError(f"no domain has {min_tools} or more tools")
    domains = sorted(groups)
    rng = random.Random(f"{seed}:agent:{slot}")
    order = domains[:]
    random.Random(f"{seed}:domains").shuffle(order)
    domain = order[slot % len(order)]
    tools = groups[domain]
    size = rng.randint(min_tools, min(max_tools, len(tools)))
    first = rng.choice(tools)
    chosen = [first]
    while len(chosen) < size:
        rest = [t for t in tools if t not in chosen]
        linked = [t for t in rest if any(feeds(c, t) or feeds(t, c) for c in chosen)]
        chosen.append(rng.choice(linked or rest))
    return domain, sorted(chosen, key=lambda t: t.name)


AGENT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "purpose": {"type": "string", "minLength": 1},
        "policy": {"type": "string"},
    },
    "required": ["name", "purpose", "policy"],
    "additionalProperties": False,
}


async def write_agent(
    model: ChatModel,
    domain: str,
    tools: list[ToolSpec],
    sampling: Sampling,
    usage: Usage,
    attempts: int = 3,
) -> AgentSpec:
    """An agent over `tools`, with a system prompt the model writes for it."""
    listing = "\n".join(f"- {t.name}: {t.description}" for t in tools)
    messages = [
        Message(
            role="system",
            content="You design AI assistants. Answer with JSON: a short product name, one "
            "sentence on what the assistant helps users do, and one rule it must follow.",
        ),
        Message(role="user", content=f"Domain: {domain}\nTools:\n{listing}"),
    ]
    completion = await ask(
        model, "synthesizer", usage, messages, sampling, schema=AGENT_SCHEMA, attempts=attempts
    )
    answer = completion.parsed
    name = " ".join(str(answer["name"]).split())[:60] or f"{domain} assistant"
    system_prompt = (
        f"You are {name}, an assistant for {domain.replace('_', ' ')}. "
        f"{' '.join(str(answer['purpose']).split())}\n"
        "Use the tools to look things up and act for the user; ask for missing details; "
        "never invent results a tool did not return."
    )
    return AgentSpec(
        name=name,
        domain=domain,
        system_prompt=system_prompt,
        tool_ids=[t.id for t in tools],
        tools=tools,
        policy=" ".join(str(answer["policy"]).split()) or None,
    )


def dependent_chain(tools: Sequence[ToolSpec], seed: str) -> list[ToolSpec]:
    """Tools in calling order where each feeds the next (2, or 3 when one extends the pair);
    empty when no offered tool's output feeds another's input."""
    pairs = [(a, b) for a in tools for b in tools if feeds(a, b)]
    if not pairs:
        return []
    rng = random.Random(f"chain:{seed}")
    first, then = rng.choice(sorted(pairs, key=lambda p: (p[0].name, p[1].name)))
    longer = sorted((c for c in tools if c not in (first, then) and feeds(then, c)),
                    key=lambda t: t.name)
    return [first, then, *longer[:1]]


def tier_task_schema(
    tools: list[ToolSpec],
    difficulty: Difficulty,
    chain: Sequence[ToolSpec] = (),
    world: JsonObject | None = None,
) -> dict[str, Any]:
    """`task_schema` for one tier: how many tools the rubric names, or none where the tools
    are fixed by the tier (a dependent chain) or must not be used (`decline`)."""
    schema = task_schema(tools, world)
    if difficulty == "decline" or (difficulty == "hard" and chain):
        del schema["properties"]["expected_tools"]
        schema["required"].remove("expected_tools")
        return schema
    low, high = EXPECTED_CALLS[difficulty]
    expected = schema["properties"]["expected_tools"]
    expected["minItems"], expected["maxItems"] = min(low, len(tools)), high
    return schema


def tier_rubric_tools(
    difficulty: Difficulty, answer: dict[str, Any], chain: Sequence[ToolSpec]
) -> list[str]:
    """The tool names a tier's rubric expects, in order."""
    if difficulty == "decline":
        return []
    if difficulty == "hard" and chain:
        return [t.name for t in chain]
    return list(answer["expected_tools"])


def task_schema(tools: list[ToolSpec], world: JsonObject | None = None) -> dict[str, Any]:
    """What the model must answer to define a task; expected tools come from the offered ones,
    expected state changes from the world's own paths."""
    strings = {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 3}
    return {
        "type": "object",
        "properties": {
            "goal": {"type": "string", "minLength": 1},
            "user_knows": strings,
            "user_withholds": strings,
            "success_criteria": {**strings, "minItems": 1},
            "expected_tools": {
                "type": "array",
                "items": {"enum": [t.name for t in tools]},
                "minItems": 1,
                "maxItems": 4,
            },
            "checkpoints": strings,
            "initial_state": STATE_CHANGES,
            **outcome_schema(world or {}, any(t.side_effect == "write" for t in tools)),
        },
        "required": [
            "goal",
            "user_knows",
            "user_withholds",
            "success_criteria",
            "expected_tools",
            "checkpoints",
            "initial_state",
            "expected_state",
            "expected_facts",
        ],
        "additionalProperties": False,
    }


async def write_task(
    model: ChatModel,
    agent: AgentSpec,
    difficulty: Difficulty,
    index: int,
    sampling: Sampling,
    usage: Usage,
    attempts: int = 3,
) -> Task:
    """A task for `agent` at `difficulty`, with a rubric, the initial world and the outcome.

    The world's records come from Faker over the tools' schemas (one world per agent); the
    model adds the task's own facts to it and names the changes and facts that mean success.
    """
    listing = "\n".join(f"- {t.name}: {t.description}" for t in agent.tools)
    fields: dict[str, Any] = {}
    for record in record_schemas(agent.tools).values():
        for name, field_schema in record.items():
            fields.setdefault(name, field_schema)
    ranges = await ask_ranges(model, fields, tool_words(agent.tools), listing, sampling, usage)
    world = build_world(agent.tools, key=agent.id, ranges=ranges)
    chain = dependent_chain(agent.tools, f"{agent.id}:{index}") if difficulty == "hard" else []
    brief = DIFFICULTY_BRIEF[difficulty]
    if chain:
        brief += ": " + ", then ".join(t.name for t in chain) + ", each with what the one " \
            "before returned"
    messages = [
        Message(
            role="system",
            content="You write test tasks for an AI assistant. A task is what one user wants, "
            "what they know, what they only tell when asked, how to judge success, which tools "
            "the assistant should call, facts that hold in the world before it starts, the "
            "world changes (path and new value) that mean success, and facts the assistant "
            "must tell the user.",
        ),
        Message(
            role="user",
            content=f"Assistant: {agent.name}\nTools:\n{listing}\n"
            f"World records:\n{describe_world(world)}\n"
            f"Write task #{index + 1}: {brief}.",
        ),
    ]
    completion = await ask(
        model, "synthesizer", usage, messages, sampling,
        schema=tier_task_schema(agent.tools, difficulty, chain, world), attempts=attempts,
        check=_gated_words,
    )
    answer = completion.parsed
    apply_changes(world, answer["initial_state"])
    # Junk beside real criteria ("," after a sentence) is dropped; none real was retried above.
    criteria = [c for c in answer["success_criteria"] if not criterion_problem(str(c))]
    if difficulty == "decline":
        criteria.append(DECLINE_CRITERION)
    task = Task(
        agent_id=agent.id,
        slot=index,
        goal=" ".join(str(answer["goal"]).split()),
        user_knows=list(answer["user_knows"]),
        user_withholds=list(answer["user_withholds"]),
        difficulty=difficulty,
        rubric=Rubric(
            success_criteria=criteria,
            expected_tools=tier_rubric_tools(difficulty, answer, chain),
            checkpoints=list(answer["checkpoints"]),
        ),
        initial_state=world,
        expected_outcome=Outcome(
            # A request the tools cannot serve must leave the world as it was.
            state={} if difficulty == "decline" else changes_to_paths(
                answer.get("expected_state", [])
            ),
            facts=[" ".join(str(f).split()) for f in answer.get("expected_facts", [])],
        ),
    )
    gate(task, agent)
    return task


def _gated_words(completion: Completion) -> str | None:
    """A task answer whose goal is junk, or whose criteria are all junk, is retried (see
    `toolspecs.task_gate`)."""
    answer = completion.parsed if isinstance(completion.parsed, dict) else {}
    criteria = [str(c) for c in answer.get("success_criteria", [])]
    problem = goal_problem(str(answer.get("goal", "")))
    if problem is None and all(criterion_problem(c) for c in criteria):
        problem = text_problems("a real request here", criteria[:1])[0] if criteria else \
            "criterion_not_checkable: no success criterion"
    return problem
