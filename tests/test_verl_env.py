"""The verl adapters, driven the way verl's ToolAgentLoop (commit b178a3c) calls them."""

from __future__ import annotations

import asyncio
import importlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipelines.export import export
from pipelines.parquet_io import read_rows
from pipelines.stages import rl_task
from pipelines.verl_env import compute_score, live_rollouts
from schemas.arrow import RL_SCHEMA, to_row
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.test_environment import RETAIL
from tests.test_rollout import roles_answer
from toolspecs.domain import load_domain


@dataclass
class AgentData:
    """What verl hands a tool as `agent_data`; the adapters read its `request_id`."""

    request_id: str


def make_run(folder: Path) -> Path:
    """A run folder (manifest config + rl/) whose user and tools are scripted."""
    registry.register(ModelConfig(backend="scripted", model="roles"), ScriptedModel(roles_answer))
    domain = load_domain(RETAIL)
    rows = [to_row(rl_task((task, domain.agent))) for task in domain.tasks]
    (folder / "rl").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), folder / "rl" / "part-0.parquet")
    config = {"models": {"user": {"backend": "scripted", "model": "roles"},
                         "tool": {"backend": "scripted", "model": "roles"}},
              "episode": {"failure_rate": 0.0}}
    (folder / "manifest.json").write_text(json.dumps({"config": config, "fingerprint": "x"}))
    return folder


def load_class(name: str) -> Any:
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def verl_objects(out: Path) -> tuple[Any, dict[str, Any]]:
    """The interaction and tools, built from the exported YAML as verl's registries build them."""
    interaction_yaml = yaml.safe_load((out / "verl" / "interaction_config.yaml").read_text())
    item = interaction_yaml["interaction"][0]
    interaction = load_class(item["class_name"])(config={**item["config"], "name": item["name"]})
    tools = {}
    for entry in yaml.safe_load((out / "verl" / "tool_config.yaml").read_text())["tools"]:
        assert entry["config"]["type"] == "native"
        tool = load_class(entry["class_name"])(config=entry["config"],
                                               tool_schema=entry["tool_schema"])
        tools[tool.name] = tool
    return interaction, tools


async def call_tool(tools: dict, request_id: str, name: str, arguments: dict) -> str:
    """verl's `_call_tool`: create, execute with agent_data, release."""
    tool = tools[name]
    instance_id, _ = await tool.create(create_kwargs={})
    try:
        response, reward, _ = await tool.execute(
            instance_id, arguments, agent_data=AgentData(request_id)
        )
    finally:
        await tool.release(instance_id)
    assert reward == 0.0
    return response.text


async def rollout(interaction: Any, tools: dict, row: dict, calls: list) -> tuple[list, list]:
    """One multi-turn rollout: tool rounds, then the assistant's reply goes to the user."""
    request_id = uuid.uuid4().hex
    kwargs = row["extra_info"]["interaction_kwargs"]
    await interaction.start_interaction(request_id, **kwargs)
    messages = [dict(m) for m in row["prompt"]]
    answers = []
    for name, arguments in calls:
        messages.append({"role": "assistant", "content": f"<tool_call>{name}</tool_call>"})
        answer = await call_tool(tools, request_id, name, arguments)
        answers.append(json.loads(answer))
        messages.append({"role": "tool", "content": answer})
    messages.append({"role": "assistant", "content": "Order ORD-5001 is cancelled."})
    turn_scores = []
    terminate, text, score, _ = await interaction.generate_response(
        request_id, messages, **kwargs
    )
    if score is not None:
        turn_scores.append(score)
    assert terminate and text == ""
    return answers, turn_scores


LOOKUP = ("find_user_id_by_email", {"email": "maya.okafor@example.com"})
CANCEL = ("cancel_pending_order", {"order_id": "ORD-5001", "reason": "no longer needed"})


def test_export_writes_verl_configs_and_rows_verl_can_route(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run")
    summary = export(run_dir, "verl", tmp_path / "verl_out")
    assert summary["verl"]["tools"] == 7 and summary["verl"]["tool_conflicts"] == []
    interaction = yaml.safe_load((tmp_path / "verl_out/verl/interaction_config.yaml").read_text())
    assert interaction["interaction"][0]["name"] == "agentmill_user"
    assert interaction["interaction"][0]["config"]["run_dir"] == str(run_dir.resolve())
    rows = read_rows(tmp_path / "verl_out" / "data")
    assert all(row["agent_name"] == "tool_agent" for row in rows)
    kwargs = rows[0]["extra_info"]["interaction_kwargs"]
    assert kwargs["name"] == "agentmill_user" and kwargs["task_id"]
    # What the user withholds is carried by the rl row itself (no tasks/ join needed).
    assert any(r["extra_info"]["interaction_kwargs"]["user_withholds"] for r in rows)


def test_a_full_multi_turn_exchange_through_the_verl_classes(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run")
    export(run_dir, "verl", tmp_path / "out")
    rows = {r["extra_info"]["interaction_kwargs"]["task_id"]: r
            for r in read_rows(tmp_path / "out" / "data")}
    first = rows[load_domain(RETAIL).tasks[0].id]

    async def main() -> None:
        interaction, tools = verl_objects(tmp_path / "out")
        answers, scores = await rollout(interaction, tools, first, [LOOKUP, CANCEL])
        assert answers[0] == {"user_id": "USR-1001"}
        assert answers[1]["status"] == "cancelled"
        assert scores == [1.0]
        extra = {**first["extra_info"], "turn_scores": scores}
        assert compute_score(first["data_source"], "", "", extra) == {
            "score": 1.0, "finished": True
        }
        # A repeated call costs the same process points as in the environment's own reward.
        _, repeated = await rollout(interaction, tools, first, [LOOKUP, LOOKUP, CANCEL])
        assert repeated == [0.95]
        # Rollouts run side by side, each in its own world.
        both = await asyncio.gather(
            rollout(interaction, tools, first, [LOOKUP, CANCEL]),
            rollout(interaction, tools, first, [LOOKUP]),
        )
        assert [s for _, s in both] == [[1.0], [0.2]]
        assert live_rollouts() == 0  # finished rollouts are let go

    asyncio.run(main())


def test_tools_without_a_rollout_answer_an_error_and_unfinished_rollouts_score_zero(
    tmp_path: Path,
) -> None:
    run_dir = make_run(tmp_path / "run")
    export(run_dir, "verl", tmp_path / "out")
    _, tools = verl_objects(tmp_path / "out")
    text = asyncio.run(call_tool(tools, "no-such-request", *LOOKUP))
    assert json.loads(text)["error"]["type"] == "no_environment"
    assert compute_score("agentmill", "", "", {"turn_scores": []}) == {
        "score": 0.0, "finished": False
    }


def test_the_adapters_subclass_verls_own_bases_when_verl_is_installed() -> None:
    """With verl importable (a release that still ships `verl.interactions`), the adapters are
    its classes; without it they stand alone with the same call signatures."""
    import importlib.util

    import pytest

    from pipelines.verl_env import AgentmillInteraction, AgentmillTool

    if importlib.util.find_spec("verl") is None or importlib.util.find_spec(
        "verl.interactions"
    ) is None:
        pytest.skip("verl with verl.interactions is not installed")
    from verl.interactions.base import BaseInteraction
    from verl.tools.base_tool import BaseTool

    assert issubclass(AgentmillInteraction, BaseInteraction)
    assert issubclass(AgentmillTool, BaseTool)
