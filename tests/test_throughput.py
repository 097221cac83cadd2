"""The episode stage keeps many episodes in flight: concurrency, no batch barrier, bounds, faults.

Models here answer after a set delay, so what a test measures is the stage's scheduling, on
Beam's in-process runner, through the real `RunEpisodes` transform.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from benchmarks.sim_server import Capacity, start_server
from pipelines import runtime
from pipelines.config import ROLES, load_config
from pipelines.manifest import tokens_by_model
from pipelines.shared import pipeline_metrics
from pipelines.stages import RunEpisodes
from schemas.records import AgentSpec, Task
from simulators.llm import registry
from simulators.llm.base import ConstrainedChatModel, RawCompletion, Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptRequest, schema_instance
from tests import helpers

SLOW = "SLOW"
emitted: list[tuple[float, str]] = []


class TimedModel(ConstrainedChatModel):
    """Answers after `delay(messages)` seconds: users open, agents reply final (2 requests per
    episode); counts how many requests are in flight at once."""

    def __init__(self, delay: Callable[[list[dict[str, str]]], float]) -> None:
        self.name = "timed"
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.agent_prompts: list[list[dict[str, str]]] = []
        self.first_start: float | None = None
        self.last_end = 0.0

    async def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any] | None, sampling: Sampling
    ) -> RawCompletion:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.first_start = self.first_start or time.monotonic()
        try:
            await asyncio.sleep(self.delay(messages))
        finally:
            self.in_flight -= 1
            self.last_end = time.monotonic()
        request = ScriptRequest(messages, schema, sampling)
        if helpers.role_of(request) == "user":
            answer: Any = {"message": f"{SLOW} please" if SLOW in request.system else "Hello"}
        elif helpers.role_of(request) == "agent":
            self.agent_prompts.append(messages)
            answer = {"content": "Done.", "final": True}
        else:
            answer = schema_instance(schema or {"type": "string"}, random.Random(0))
        text = json.dumps(answer)
        return RawCompletion(text, 10, 5, "stop")


def is_slow(messages: list[dict[str, str]]) -> bool:
    return any(SLOW in m["content"] for m in messages)


def pairs(n: int, slow: int | None = None, agents: int = 1) -> list[tuple[Task, AgentSpec]]:
    specs = [
        helpers.agent().model_copy(
            update={
                "name": f"Agent {i}",
                "id": f"agent_{i}",
                "system_prompt": f"You are Agent {i}, a travel assistant.",
            }
        )
        for i in range(agents)
    ]
    out = []
    for i in range(n):
        agent = specs[i % agents]
        goal = f"{SLOW}: run my errand {i}" if i == slow else f"Errand {i}: book a flight."
        out.append((helpers.task(agent).model_copy(update={"goal": goal, "id": f"t{i}"}), agent))
    return out


class Collect(beam.DoFn):
    """Records when each trajectory or failure reached the next transform."""

    def process(self, record: Any) -> Iterator[None]:
        emitted.append((time.monotonic(), getattr(record, "task_id", None) or record.input_id))
        return iter(())


def run_stage(inputs: list[Any], model: ConstrainedChatModel | None, **extra: Any) -> Any:
    """Run `RunEpisodes` over `inputs` on FnApiRunner, the scripted `model` in every role."""
    overrides: dict[str, Any] = {"episodes": len(inputs), **extra}
    if model is not None:
        registry.register(ModelConfig(backend="scripted", model="timed"), model)
        for role in ROLES:
            overrides[f"models.{role}.backend"] = "scripted"
            overrides[f"models.{role}.model"] = "timed"
    config = load_config(None, overrides)
    emitted.clear()
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    played = pipeline | beam.Create(inputs) | RunEpisodes(config)
    # Collected in the episode stage's own fused stage (a Flatten would end it), so the times
    # are when the stage emitted each record.
    _ = played.trajectories | "CollectTrajectories" >> beam.ParDo(Collect())
    _ = played.failures | "CollectFailures" >> beam.ParDo(Collect())
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        runtime.close_models()
    return result


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    yield
    registry.clear()


def test_a_batch_of_episodes_runs_in_about_one_episodes_time() -> None:
    model = TimedModel(lambda messages: 0.1)
    run_stage(pairs(50), model)
    assert len(emitted) == 50
    assert model.max_in_flight == 50  # every episode's request at once
    # 50 episodes of 2 x 0.1 s requests: 10 s one at a time, ~0.2 s together.
    assert model.first_start is not None and model.last_end - model.first_start < 2.0


def test_a_slow_episode_does_not_hold_back_the_rest_of_its_batch() -> None:
    model = TimedModel(lambda messages: 2.0 if is_slow(messages) else 0.02)
    run_stage(pairs(10, slow=3), model, batch_size=64)
    order = [task_id for _, task_id in emitted]
    assert order[-1] == "t3" and sorted(order) == sorted(f"t{i}" for i in range(10))
    slow_at = emitted[-1][0]
    assert all(slow_at - at > 2.0 for at, _ in emitted[:-1])  # the others left >= 2 s earlier


def test_episodes_in_flight_are_bounded_and_refilled_across_batches() -> None:
    model = TimedModel(lambda messages: 0.05)
    run_stage(pairs(20), model, in_flight=4, batch_size=3)
    assert len(emitted) == 20
    # Four at once although batches hold three: the window spans batches, and never exceeds.
    assert model.max_in_flight == 4


def test_agent_prompts_start_with_the_same_system_prompt_and_tools() -> None:
    """Prefix caching: every agent request of an agent starts with byte-identical text."""
    model = TimedModel(lambda messages: 0.0)
    run_stage(pairs(6, agents=2), model)
    firsts = Counter(json.dumps(prompt[0]) for prompt in model.agent_prompts)
    assert len(model.agent_prompts) == 6 and len(firsts) == 2  # one prefix per agent
    for prompt in model.agent_prompts:
        assert prompt[0]["role"] == "system" and "You can call these tools:" in prompt[0]["content"]
        assert all(m["role"] != "system" for m in prompt[1:])  # per-episode text comes after


def test_openai_backend_bounds_requests_and_loses_no_episode_under_faults() -> None:
    capacity = Capacity(
        slots=64, token_s=0.002, tokens=10, p429=0.1, p5xx=0.1, pdrop=0.05, pslow=0.05,
        slow_factor=20, retry_after_s=0.05, seed=3,
    )
    inputs = pairs(40, agents=4)
    with start_server(capacity) as server:
        model = {"backend": "openai", "model": "sim", "base_url": server.base_url}
        overrides = {f"models.{r}.{k}": v for r in ROLES for k, v in model.items()}
        overrides |= {f"models.{r}.max_in_flight": 8 for r in ROLES}
        overrides |= {"episode.max_turns": 2, "episode.max_tool_rounds": 1}
        client = runtime.model(load_config(None, overrides).models.agent)
        result = run_stage(inputs, None, **overrides)
        stats = server.stats()
    assert 4 < stats["max_open"] <= 8  # the client's bound, not the server's 64 slots
    assert stats["rate_limited"] and stats["server_errors"] and stats["dropped"]
    seen = Counter(task_id for _, task_id in emitted)
    assert set(seen) == {task.id for task, _ in inputs}  # none lost
    assert max(seen.values()) == 1  # none twice
    tokens, _ = pipeline_metrics(result)
    counted = sum(t["retries"] for t in tokens.values())
    assert 0 < counted <= client.retries  # retries of requests that failed for good are not
    assert all(t["wait_s"] > 0 for t in tokens.values())


def test_manifest_sums_roles_per_model() -> None:
    tokens = {
        "agent": {"prompt": 10, "completion": 2, "requests": 1, "retries": 1, "wait_s": 0.5},
        "user": {"prompt": 5, "completion": 1, "requests": 1, "retries": 0, "wait_s": 0.25},
        "judge": {"prompt": 7, "completion": 3, "requests": 2, "retries": 2, "wait_s": 1.0},
    }
    by_model = tokens_by_model(tokens, {"agent": "big", "user": "small", "judge": "big"})
    assert by_model["big"] == {
        "prompt": 17, "completion": 5, "requests": 3, "retries": 3, "wait_s": 1.5,
        "roles": ["agent", "judge"],
    }
    assert by_model["small"]["roles"] == ["user"]
