"""The outcome reward: state comparison against the expected world, beside the judge's verdict."""

from __future__ import annotations

import asyncio
import json

import pytest

from filters.reward import expected_final_state, score_trajectory
from pipelines.config import ROLES, load_config
from pipelines.stages import _JudgeFn, rl_task
from schemas import arrow
from schemas.records import (
    JudgedTrajectory,
    Message,
    Outcome,
    RLTask,
    Trajectory,
)
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from tests import helpers
from tests.helpers import role_model

WORLD = {
    "orders": {
        "ORD-1": {"order_id": "ORD-1", "status": "pending", "total_usd": 40.0},
        "ORD-2": {"order_id": "ORD-2", "status": "shipped", "total_usd": 12.5},
    },
    "account": "ada",
}
OUTCOME = Outcome(state={"orders/ORD-1/status": "cancelled"}, facts=["refund of 40.00"])
TASK = helpers.task().model_copy(update={"initial_state": WORLD, "expected_outcome": OUTCOME})


def trajectory(final_state: dict, reply: str) -> Trajectory:
    return Trajectory(
        task_id=TASK.id, agent_id=TASK.agent_id, persona_id="p", domain="travel",
        messages=[
            Message(role="system", content="You are Skyline."),
            Message(role="user", content="Cancel my order please"),
            Message(role="assistant", content=reply),
        ],
        tools=[], final_state=final_state, end_reason="user_stop", turns=1,
    )


def cancelled(**extra) -> dict:
    state = expected_final_state(WORLD, OUTCOME)
    state.update(extra)
    return state


def test_matching_state_and_facts_earn_reward_one() -> None:
    reward = score_trajectory(trajectory(cancelled(), "Done, a Refund of 40.00 is on its way."),
                              TASK)
    assert reward.reward == 1.0 and reward.state_match
    assert reward.facts_found == ["refund of 40.00"]


def test_new_records_are_allowed_but_other_changes_are_not() -> None:
    created = cancelled(returns={"RET-9": {"return_id": "RET-9"}})
    assert score_trajectory(trajectory(created, "refund of 40.00"), TASK).reward == 1.0
    wrong = cancelled()
    wrong["orders"]["ORD-2"]["status"] = "cancelled"
    reward = score_trajectory(trajectory(wrong, "refund of 40.00"), TASK)
    assert reward.reward == 0.0 and reward.state_match is False
    assert reward.reasons == [
        'state: orders/ORD-2/status is "cancelled", expected "shipped"'
    ]
    deleted = cancelled()
    del deleted["account"]
    assert "state: account is missing" in score_trajectory(
        trajectory(deleted, "refund of 40.00"), TASK
    ).reasons[0]


def test_unchanged_world_or_missing_fact_earn_zero() -> None:
    reward = score_trajectory(trajectory(WORLD, "Cancelled! refund of 40.00"), TASK)
    assert reward.reward == 0.0
    assert reward.reasons == ['state: orders/ORD-1/status is "pending", expected "cancelled"']
    reward = score_trajectory(trajectory(cancelled(), "Cancelled."), TASK)
    assert reward.reward == 0.0 and reward.state_match is True
    assert reward.reasons == ["fact: the agent never said 'refund of 40.00'"]


def test_a_task_without_outcome_has_no_reward() -> None:
    task = TASK.model_copy(update={"expected_outcome": Outcome()})
    assert score_trajectory(trajectory(WORLD, "hi"), task).reward is None


def judge_fn(score: int) -> _JudgeFn:
    """The judge stage's DoFn with a scripted judge that gives every criterion `score`."""
    name = f"judge-{score}"
    overrides: dict = {"out": "unused", "episodes": 2}
    for role in ROLES:
        overrides[f"models.{role}.backend"] = "scripted"
        overrides[f"models.{role}.model"] = name
    keys = [f"c{i}" for i in range(1, len(TASK.rubric.success_criteria) + 1)]
    registry.register(
        ModelConfig(backend="scripted", model=name),
        role_model({"judge": lambda r: {k: {"reason": "looks right", "score": score}
                                        for k in keys}}),
    )
    return _JudgeFn(load_config(None, overrides))


@pytest.fixture(autouse=True)
def _clear_registry():
    yield
    registry.clear()


def test_judge_and_state_can_disagree_and_both_are_kept() -> None:
    # The agent only says it cancelled: the judge believes it, the world says otherwise.
    claimed = trajectory(WORLD, "I cancelled ORD-1, refund of 40.00 issued.")
    outputs, _ = asyncio.run(judge_fn(2).handle((claimed, TASK)))
    passed, judgement = outputs[0].trajectory, outputs[0].judgement
    assert judgement.passed and judgement.score == 1.0
    assert judgement.reward == 0.0
    assert "expected \"cancelled\"" in judgement.reward_reasons[0]
    row = arrow.sft_row(passed, judgement)
    assert (row["judge_score"], row["reward"]) == (1.0, 0.0)

    # The agent did the work; the judge is not convinced. Rejected, reward 1 kept with it.
    done = trajectory(cancelled(), "ok. refund of 40.00")
    outputs, _ = asyncio.run(judge_fn(0).handle((done, TASK)))
    rejected: JudgedTrajectory = outputs[0]
    assert not rejected.judgement.passed and rejected.judgement.reward == 1.0
    row = arrow.rejected_row(rejected)
    assert row["reward"] == 1.0 and json.loads(row["judgement"])["reward"] == 1.0


def test_rl_rows_carry_initial_state_tools_rubric_and_expected_outcome() -> None:
    spec = helpers.agent()
    task = TASK.model_copy(update={"agent_id": spec.id})
    rl = rl_task((task, spec))
    row = arrow.to_row(rl)
    assert set(row) == set(arrow.RL_SCHEMA.names)
    assert json.loads(row["expected_outcome"]) == OUTCOME.model_dump()
    assert json.loads(row["initial_state"]) == WORLD
    assert json.loads(row["rubric"])["success_criteria"] == task.rubric.success_criteria
    assert [t["function"]["name"] for t in json.loads(row["tools"])] == [
        t.name for t in spec.tools
    ]
    back = arrow.from_row(RLTask, row)
    assert back.expected_outcome == OUTCOME and back.id == rl.id
