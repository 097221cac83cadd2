"""The task environment: reset/step played by an outside policy over the retail domain."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from filters import checks
from filters.checks import PROCESS_CHECKS, TRANSIENT_FAULTS, run_checks
from filters.reward import (
    PROCESS_PARTS,
    RewardConfig,
    episode_scorer,
    process_counts,
)
from pipelines.stages import rl_task
from simulators.environment import Environment, EpisodeOver, InvalidAction
from simulators.episode import EpisodeConfig
from simulators.llm.scripted import schema_instance
from tests.helpers import role_model
from toolspecs.domain import load_domain

RETAIL = Path(__file__).resolve().parents[1] / "data" / "domains" / "retail"


def retail_tool(request: Any) -> dict:
    """A tool model that answers retail calls plausibly (the world reconciles the rest)."""
    if "cancel_pending_order(" in request.last:
        return {"result": {"order_id": "ORD-5001", "status": "cancelled"}, "state_changes": []}
    if "find_user_id_by_email(" in request.last:
        return {"result": {"user_id": "USR-1001"}}
    if "get_order_details(" not in request.last:
        return schema_instance(request.schema, random.Random(0))
    return {"result": {"order_id": "ORD-5001", "user_id": "USR-1001", "product_id": "PRD-301",
                       "status": "pending", "total_usd": 1.0, "address": "x"}}


def retail_env(user_done: bool = True, **config: Any) -> Environment:
    domain = load_domain(RETAIL)
    row = rl_task((domain.tasks[0], domain.agent))
    model = role_model({
        "tool": retail_tool,
        "user": lambda r: {"message": "yes please", "done": user_done}
        if "done" in r.schema["properties"] else {"message": "Cancel my shoe order."},
    })
    settings = {"failure_rate": 0.0, **config}
    return Environment.from_rl(row, model, model, EpisodeConfig(**settings))


def call(name: str, arguments: Any, call_id: str = "c1") -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    ]}


async def _play(env: Environment, actions: list[tuple[dict, bool]], seed: int = 3) -> list:
    observation = await env.reset(seed)
    results = [observation]
    for message, final in actions:
        results.append(await env.step(message, final=final))
    return results


def test_reset_gives_the_system_prompt_the_users_opening_and_the_tools() -> None:
    env = retail_env()
    observation = asyncio.run(env.reset(5))
    assert [m.role for m in observation.messages] == ["system", "user"]
    assert observation.messages[0].content.startswith("You are ShopAssist")
    assert "Policy:" in observation.messages[0].content
    assert observation.messages[1].content == "Cancel my shoe order."
    assert {t["function"]["name"] for t in observation.tools} >= {"cancel_pending_order"}
    # The rl row carries what the user knows and withholds, for the user simulator.
    assert env.task.user_withholds == ["the order id is ORD-5001"]


def test_steps_answer_tools_then_the_user_and_end_with_a_trajectory() -> None:
    env = retail_env()
    _, lookup, cancel, reply = asyncio.run(_play(env, [
        (call("find_user_id_by_email", {"email": "maya.okafor@example.com"}), False),
        (call("cancel_pending_order", json.dumps(
            {"order_id": "ORD-5001", "reason": "no longer needed"}), "c2"), False),
        ({"role": "assistant", "content": "Order ORD-5001 is cancelled."}, True),
    ]))
    assert not lookup.done and lookup.messages[0].role == "tool"
    assert json.loads(lookup.messages[0].content) == {"user_id": "USR-1001"}
    assert cancel.messages[0].tool_call_id == "c2"
    assert reply.done and reply.end_reason == "user_stop" and reply.messages == []
    assert env.state["orders"]["ORD-5001"]["status"] == "cancelled"
    assert env.trajectory is not None and env.trajectory.task_id == env.task.id
    with pytest.raises(EpisodeOver):
        asyncio.run(env.step({"role": "assistant", "content": "hello?"}))


def test_unknown_tools_and_bad_arguments_get_api_errors_not_exceptions() -> None:
    env = retail_env()
    _, unknown, bad_json, bad_schema = asyncio.run(_play(env, [
        (call("teleport", {}), False),
        (call("cancel_pending_order", "{not json", "c2"), False),
        (call("cancel_pending_order", {"order_id": 5}, "c3"), False),
    ]))
    errors = [json.loads(r.messages[0].content)["error"] for r in (unknown, bad_json, bad_schema)]
    assert [e["type"] for e in errors] == ["unknown_tool", "invalid_json", "invalid_arguments"]
    assert not any(r.done for r in (unknown, bad_json, bad_schema))


def test_calls_beyond_the_turns_tool_budget_are_refused_and_the_policy_must_reply() -> None:
    env = retail_env(max_tool_rounds=1)
    _, first, second = asyncio.run(_play(env, [
        (call("find_user_id_by_email", {"email": "maya.okafor@example.com"}), False),
        (call("find_user_id_by_email", {"email": "maya.okafor@example.com"}, "c2"), False),
    ]))
    assert json.loads(first.messages[0].content) == {"user_id": "USR-1001"}
    error = json.loads(second.messages[0].content)["error"]
    assert error["type"] == "tool_budget_exhausted"
    assert not env.may_call_tools


def test_a_user_that_goes_on_gets_its_reply_and_the_turn_limit_ends_it() -> None:
    env = retail_env(user_done=False, max_turns=2)
    _, first, second = asyncio.run(_play(env, [
        ({"role": "assistant", "content": "Which order?"}, False),
        ({"role": "assistant", "content": "Still there?"}, False),
    ]))
    assert not first.done and [m.role for m in first.messages] == ["user"]
    assert second.done and second.end_reason == "turn_limit"


def test_malformed_messages_are_refused_with_the_field_named() -> None:
    env = retail_env()
    asyncio.run(env.reset(1))
    for message, field in [
        ({"role": "user", "content": "hi"}, "role"),
        ({"tool_calls": [{"id": "x"}]}, "function"),
        ({"tool_calls": [{"function": {"arguments": "{}"}}]}, "name"),
        ({"content": 5}, "content"),
        ("text", "object"),
    ]:
        with pytest.raises(InvalidAction, match=field):
            asyncio.run(env.step(message))
    # A refused message changes nothing: the episode goes on.
    assert [m.role for m in env.messages] == ["system", "user"] and not env.done


def test_same_seed_same_episode_and_reset_starts_afresh() -> None:
    env = retail_env(failure_rate=0.5)
    actions = [
        (call("find_user_id_by_email", {"email": "maya.okafor@example.com"}), False),
        (call("get_order_details", {"order_id": "ORD-5001"}, "c2"), False),
        (call("cancel_pending_order", {"order_id": "ORD-5001", "reason": "x"}, "c3"), False),
    ]
    first = asyncio.run(_play(env, actions, seed=11))
    state_after_first = json.dumps(env.state, sort_keys=True)
    again = asyncio.run(_play(env, actions, seed=11))
    assert [r.messages for r in again] == [r.messages for r in first]
    assert json.dumps(env.state, sort_keys=True) == state_after_first
    asyncio.run(env.reset(11))
    assert env.state["orders"]["ORD-5001"]["status"] == "pending"  # a fresh world


# rewards ---------------------------------------------------------------------------------------

LOOKUP = ("find_user_id_by_email", {"email": "maya.okafor@example.com"})
CANCEL = ("cancel_pending_order", {"order_id": "ORD-5001", "reason": "no longer needed"})


def scored_env(task_index: int = 0, **config: Any) -> Environment:
    env = retail_env(**config)
    if task_index:
        domain = load_domain(RETAIL)
        env = Environment.from_rl(
            rl_task((domain.tasks[task_index], domain.agent)), env.user_model, env.tool_model,
            env.config,
        )
    env.scorer = episode_scorer(RewardConfig())
    return env


def policy(*calls: tuple[str, dict], reply: str = "Order ORD-5001 is cancelled.") -> list:
    """A scripted policy: each call in its own step, then the reply."""
    steps = [(call(name, arguments, f"c{i}"), False) for i, (name, arguments) in enumerate(calls)]
    return [*steps, ({"role": "assistant", "content": reply}, True)]


def final(env: Environment, actions: list, seed: int = 3) -> Any:
    return asyncio.run(_play(env, actions, seed))[-1]


def test_the_right_calls_earn_outcome_one_and_a_clean_process() -> None:
    result = final(scored_env(), policy(LOOKUP, CANCEL))
    assert result.done and result.reward == 1.0
    assert result.reward_parts["outcome"] == 1.0 and result.reward_parts["process"] == 1.0
    assert all(result.reward_parts[part] == 0.0 for part in PROCESS_PARTS)


def test_claiming_success_without_the_calls_earns_outcome_zero() -> None:
    result = final(scored_env(), policy())
    assert result.reward_parts["outcome"] == 0.0
    assert result.reward == pytest.approx(RewardConfig().process_share * 1.0)
    assert any("orders/ORD-5001/status" in reason for reason in result.reasons)


def test_a_repeated_call_loses_exactly_the_points_for_repetition() -> None:
    clean = final(scored_env(), policy(LOOKUP, CANCEL))
    again = final(scored_env(), policy(LOOKUP, LOOKUP, CANCEL))
    weights = RewardConfig()
    assert again.reward_parts["outcome"] == 1.0
    assert again.reward_parts["repeated_calls"] == -weights.repeated_calls
    # The repeat is also a call beyond the task's chain of four expected tools? No: 3 calls.
    assert again.reward_parts["extra_calls"] == 0.0
    assert again.reward_parts["process"] == 1.0 - weights.repeated_calls
    assert clean.reward - again.reward == pytest.approx(
        weights.process_share * weights.repeated_calls
    )


def test_process_parts_count_bad_calls_and_calls_beyond_the_chain() -> None:
    bad = final(scored_env(max_tool_rounds=8), policy(
        ("teleport", {}), ("cancel_pending_order", {"order_id": 5}), LOOKUP,
        ("get_user_details", {"user_id": "USR-1001"}),
        ("get_order_details", {"order_id": "ORD-5001"}),
        ("get_product_details", {"product_id": "PRD-301"}), CANCEL,
    ))
    parts = bad.reward_parts
    assert parts["unknown_tools"] == -0.25 and parts["invalid_arguments"] == -0.25
    assert parts["extra_calls"] == pytest.approx(-0.1 * 2)  # 6 offered-tool calls, 4 expected
    assert parts["repeated_calls"] == 0.0 and parts["outcome"] == 1.0
    assert parts["process"] == pytest.approx(1.0 - 0.25 - 0.25 - 0.2)


def test_giving_up_after_an_injected_transient_failure_is_penalised() -> None:
    env = scored_env(failure_rate=1.0)
    seed = next(
        s for s in range(100)
        if final(env, policy(LOOKUP), seed=s) and env.trajectory.injected_faults[0].kind
        in TRANSIENT_FAULTS
    )
    gave_up = final(env, policy(LOOKUP), seed=seed)
    assert gave_up.reward_parts["gave_up_after_fault"] == -0.5
    retried = final(env, policy(LOOKUP, LOOKUP), seed=seed)
    faults = env.trajectory.injected_faults
    assert faults[0].kind in TRANSIENT_FAULTS  # the same first failure, now retried
    expected = -0.5 if faults[-1].kind in TRANSIENT_FAULTS else 0.0
    assert retried.reward_parts["gave_up_after_fault"] == expected


def test_the_checks_and_the_process_reward_find_the_same_bad_calls() -> None:
    env = scored_env()
    final(env, policy(("teleport", {}), ("cancel_pending_order", {"order_id": 5})))
    assert env.trajectory is not None
    failures = run_checks(env.trajectory, env.agent.tools, max_turns=3)
    counts, _ = process_counts(env.trajectory, env.task, {t.name: t for t in env.agent.tools})
    assert counts["unknown_tools"] == sum(f.startswith("unknown_tool:") for f in failures) == 1
    assert counts["invalid_arguments"] == sum(
        f.startswith("invalid_arguments:") for f in failures
    ) == 1


def _repeat_findings(env: Environment) -> tuple[int, list[str]]:
    """The reward's repetition count and the check's repetition failures, on one trajectory."""
    assert env.trajectory is not None
    counts, _ = process_counts(env.trajectory, env.task, {t.name: t for t in env.agent.tools})
    failures = run_checks(env.trajectory, env.agent.tools, max_turns=3)
    return counts["repeated_calls"], [f for f in failures if f.startswith("repeated_call:")]


def test_the_loop_check_and_the_repetition_reward_share_one_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = scored_env(max_tool_rounds=8)
    final(env, policy(LOOKUP, LOOKUP, LOOKUP, CANCEL))
    count, failures = _repeat_findings(env)
    assert count == 2 and failures == [
        "repeated_call: 'find_user_id_by_email' called 3 times with "
        '{"email":"maya.okafor@example.com"}'
    ]
    # Three lookups of different emails repeat nothing, for both...
    emails = [f"{name}@example.com" for name in ("maya.okafor", "m.okafor", "maya")]
    final(env, policy(*[("find_user_id_by_email", {"email": e}) for e in emails], CANCEL))
    assert _repeat_findings(env) == (0, [])
    # ...until the shared rule of what makes two calls identical changes: then both see it.
    monkeypatch.setattr(checks, "call_key", lambda call: (call.function.name, ""))
    count, failures = _repeat_findings(env)
    assert count == 2 and len(failures) == 1 and "called 3 times" in failures[0]


def test_the_opt_in_process_checks_report_what_the_reward_counts() -> None:
    domain = load_domain(RETAIL)
    task = domain.tasks[0].model_copy(update={"difficulty": "decline", "id": "t-decline"})
    env = Environment(task, domain.agent, retail_env().user_model, retail_env().tool_model,
                      EpisodeConfig(failure_rate=0.0), scorer=episode_scorer())
    final(env, policy(CANCEL, ("cancel_pending_order", {"order_id": "ORD-5002", "reason": "x"}),
                      reply="I cannot help with that."))
    assert env.trajectory is not None
    tools = {t.name: t for t in env.agent.tools}
    counts, _ = process_counts(env.trajectory, env.task, tools)
    failures = run_checks(env.trajectory, tools, 3, checks=PROCESS_CHECKS, task=env.task)
    assert counts["decline_writes"] == 2
    assert [f.split(":")[0] for f in failures] == ["decline_writes"] * 2
    # The same calls in the task to carry out: within its chain, nothing to report.
    long = scored_env(max_tool_rounds=8)
    final(long, policy(LOOKUP, ("get_user_details", {"user_id": "USR-1001"}),
                       ("get_order_details", {"order_id": "ORD-5001"}),
                       ("get_product_details", {"product_id": "PRD-301"}), CANCEL, CANCEL))
    assert long.trajectory is not None
    counts, _ = process_counts(long.trajectory, long.task, tools)
    failures = run_checks(long.trajectory, tools, 3, checks=PROCESS_CHECKS, task=long.task)
    assert counts["extra_calls"] == 2 == sum(f.startswith("extra_calls:") for f in failures)


def test_writes_in_a_decline_task_are_penalised() -> None:
    domain = load_domain(RETAIL)
    task = domain.tasks[0].model_copy(update={"difficulty": "decline", "id": "t-decline"})
    env = Environment(task, domain.agent, retail_env().user_model, retail_env().tool_model,
                      EpisodeConfig(failure_rate=0.0), scorer=episode_scorer())
    result = final(env, policy(CANCEL, reply="I cannot help with that."))
    assert result.reward_parts["decline_writes"] == -1.0
    assert result.reward_parts["process"] == 0.0
