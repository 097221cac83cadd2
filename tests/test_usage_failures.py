"""Every token a model spent is counted, also those of attempts and elements that failed.

A scripted backend records the token counts of every answer it gives, per role; a run whose
agent writer, task writer and judge fail (after their retries) must report exactly those sums in
its manifest, since `agentmill plan` scales from them.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from filters.judge import JudgeError, judge
from pipelines.run import run
from pipelines.shared import stable_seed
from simulators.llm import registry
from simulators.llm.base import RawCompletion, Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel, ScriptRequest, schema_instance
from tests import helpers
from tests.test_pipeline import scripted_config

RETRY_STEP = 7919
"""`simulators.ask` seeds attempt k of a request with seed + 7919 k."""


class CountingModel(ScriptedModel):
    """A scripted model that adds up, per role, the tokens of every answer it gave."""

    def __init__(self, respond: Any) -> None:
        super().__init__(respond)
        self.spent: dict[str, Counter[str]] = {}

    async def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any] | None, sampling: Sampling
    ) -> RawCompletion:
        raw = await super().generate(messages, schema, sampling)
        role = helpers.role_of(self.requests[-1])
        tally = self.spent.setdefault(role, Counter())
        tally["prompt"] += raw.prompt_tokens
        tally["completion"] += raw.completion_tokens
        tally["requests"] += 1
        return raw


def _attempt_seeds(seed: int, attempts: int = 3) -> set[int]:
    return {seed + RETRY_STEP * k for k in range(attempts)}


def test_tokens_per_role_include_every_failed_attempt(tmp_path: Path) -> None:
    name = "counting"
    config = scripted_config(tmp_path / "run", episodes=6, name=name)
    bad_agent = _attempt_seeds(stable_seed(config.seed, "agent", 0))
    bad_task = _attempt_seeds(stable_seed(config.seed, "task", 3))
    judged: list[int] = []

    def respond(request: ScriptRequest) -> Any:
        role = helpers.role_of(request)
        seed = request.sampling.seed
        if role == "synthesizer" and seed in bad_agent | bad_task:
            return "not JSON at all"  # the writer fails all its attempts for these slots
        if role == "judge":
            judged.append(1)
            if len(judged) % 2:
                return "the agent did fine"  # not JSON: the backend refuses it
            keys = request.schema["required"]  # type: ignore[index]
            return {k: {"score": 2, "reason": "   "} for k in keys}  # no reason: retried
        return schema_instance(request.schema or {"type": "string"}, request_rng(request))

    model = CountingModel(respond)
    registry.register(ModelConfig(backend="scripted", model=name), model)
    try:
        manifest = run(config)
    finally:
        registry.clear()

    failures = Counter(manifest["failures_by_stage"])
    assert failures["agents"] == 1 and failures["tasks"] == 1
    assert failures["judge"] >= 1 and manifest["reconcile"]["ok"]
    tokens = manifest["tokens"]
    for role, spent in model.spent.items():
        assert tokens[role]["prompt"] == spent["prompt"], role
        assert tokens[role]["completion"] == spent["completion"], role
        assert tokens[role]["requests"] == spent["requests"], role
    assert set(tokens) == set(model.spent)


def request_rng(request: ScriptRequest) -> random.Random:
    return random.Random(f"{request.sampling.seed}:{len(request.messages)}")


def test_judge_counts_unusable_answers_into_the_callers_usage() -> None:
    model = CountingModel(["not json", {"c1": {"score": 2, "reason": ""}}, "still not"])
    usage: dict[str, Any] = {}
    trajectory, task = _judged_pair()
    with pytest.raises(JudgeError) as info:
        asyncio.run(judge(trajectory, task, model, usage=usage, max_attempts=3))
    spent = model.spent["judge"]
    assert usage["judge"].requests == 3 == info.value.attempts
    assert usage["judge"].prompt == spent["prompt"] == info.value.prompt_tokens
    assert usage["judge"].completion == spent["completion"] == info.value.completion_tokens


def _judged_pair() -> tuple[Any, Any]:
    from schemas.records import Message, Rubric, Task, Trajectory

    task = Task(agent_id="a", goal="Cancel order O-1.", rubric=Rubric(success_criteria=["done"]))
    trajectory = Trajectory(
        task_id=task.id, agent_id="a", persona_id="p", domain="shop", tools=[],
        messages=[Message(role="user", content="cancel O-1"),
                  Message(role="assistant", content="Cancelled.")],
        end_reason="agent_final",
    )
    return trajectory, task
