"""The verl adapters, driven by verl's own code where a release has it.

verl 0.9.1 (PyPI, installed by install.sh) loads the tools from the exported YAML
(`initialize_tools_from_config`), calls them (`ToolAgentLoop._call_tool` with a real
`AgentData`) and scores the rollout (`NaiveRewardManager.run_single` of its reward loop). The
Interaction is driven by the protocol of verl commit b178a3c (`verl/interactions/base.py`,
`tool_agent_loop.py`), read from source: no PyPI release ships `verl.interactions`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from verl import DataProto
from verl.experimental.agent_loop.tool_agent_loop import AgentData, ToolAgentLoop
from verl.experimental.agent_loop.tool_parser import FunctionCall
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.tools.base_tool import BaseTool
from verl.tools.tool_registry import initialize_tools_from_config

from pipelines.export import export
from pipelines.parquet_io import read_rows
from pipelines.stages import rl_task
from pipelines.verl_env import (
    AgentmillInteraction,
    AgentmillTool,
    agent_words,
    compute_score,
    live_rollouts,
)
from schemas.arrow import RL_SCHEMA, to_row
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.test_environment import RETAIL
from tests.test_rollout import roles_answer
from toolspecs.domain import load_domain

LOOKUP = ("find_user_id_by_email", {"email": "maya.okafor@example.com"})
CANCEL = ("cancel_pending_order", {"order_id": "ORD-5001", "reason": "no longer needed"})
REPLY = "Order ORD-5001 is cancelled."


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


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """The retail run exported for verl, and its rows by task id."""
    export(make_run(tmp_path / "run"), "verl", tmp_path / "out")
    rows = {r["extra_info"]["task_id"]: r for r in read_rows(tmp_path / "out" / "data")}
    return tmp_path / "out", rows


def first_task() -> str:
    return load_domain(RETAIL).tasks[0].id


def verl_tools(out: Path) -> dict[str, Any]:
    """The tools as verl 0.9.1's registry builds them from the exported YAML."""
    tools = initialize_tools_from_config(str(out / "verl" / "tool_config.yaml"))
    return {tool.name: tool for tool in tools}


def tool_loop(tools: dict[str, Any]) -> Any:
    """A ToolAgentLoop with only what its `_call_tool` reads (no model server, no tokenizer)."""
    loop = object.__new__(ToolAgentLoop)
    loop.tools = tools
    loop.max_tool_response_length = 100_000
    loop.tool_response_truncate_side = "middle"
    return loop


def agent_data(row: dict, request_id: str | None = None) -> AgentData:
    """What ToolAgentLoop.run builds for a row (`tools_kwargs` from `extra_info`, as verl's
    dataset moves it)."""
    return AgentData(
        messages=[dict(m) for m in row["prompt"]], image_data=None, video_data=None,
        audio_data=None, mm_processor_kwargs=None, metrics={},
        request_id=request_id or uuid.uuid4().hex,
        tools_kwargs=row["extra_info"]["tools_kwargs"],
    )


async def call(loop: Any, data: AgentData, name: str, arguments: dict) -> str:
    """One call through verl's own `_call_tool` (create with create_kwargs, execute, release)."""
    response, reward, _ = await ToolAgentLoop._call_tool(
        loop, FunctionCall(name=name, arguments=json.dumps(arguments)), data.tools_kwargs, data
    )
    assert reward == 0.0
    return response.text


class Decoder:
    """A tokenizer whose decode gives the rollout's response text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return self.text


async def verl_reward(row: dict, data: AgentData, response: str, rounds: int) -> float:
    """The rollout's reward as verl 0.9.1's reward loop computes it: `NaiveRewardManager`
    hands `compute_score` the row's extra_info updated with the loop's extra fields."""
    fields = {**data.extra_fields, "turn_scores": data.turn_scores,
              "tool_rewards": data.tool_rewards}
    batch = DataProto.from_dict(
        tensors={"responses": torch.ones(1, 4, dtype=torch.long),
                 "attention_mask": torch.ones(1, 6, dtype=torch.long)},
        non_tensors={
            "data_source": np.array([row["data_source"]], dtype=object),
            "reward_model": np.array([row["reward_model"]], dtype=object),
            "extra_info": np.array([dict(row["extra_info"])], dtype=object),
            "tool_extra_fields": np.array([fields], dtype=object),
            # ToolAgentLoop's num_turns: user turns (one per tool round) + assistant turns + 1
            "__num_turns__": np.array([rounds + (rounds + 1) + 1]),
        },
    )
    manager = NaiveRewardManager(SimpleNamespace(), Decoder(response), compute_score)
    result = await manager.run_single(batch)
    assert result["reward_extra_info"]["finished"] is True
    return float(result["reward_score"])


async def tool_only_rollout(loop: Any, row: dict, calls: list, reply: str = REPLY) -> float:
    """A verl 0.9.1 rollout: the policy's calls, then its reply ends it; the response text is
    rendered as a hermes model writes it."""
    data = agent_data(row)
    response = []
    for name, arguments in calls:
        response.append(f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(arguments)}}}'
                        "</tool_call>")
        answer = await call(loop, data, name, arguments)
        response.append(f"user\n<tool_response>\n{answer}\n</tool_response>\nassistant\n")
    response.append(reply)
    return await verl_reward(row, data, "".join(response), len(calls))


def test_export_binds_every_tool_to_the_rows_task_through_create_kwargs(
    exported: tuple[Path, dict],
) -> None:
    out, rows = exported
    summary = json.loads((out / "export.json").read_text())
    assert summary["verl"]["tools"] == 7 and summary["verl"]["tool_conflicts"] == []
    interaction = yaml.safe_load((out / "verl/interaction_config.yaml").read_text())
    assert interaction["interaction"][0]["name"] == "agentmill_user"
    run_dir = interaction["interaction"][0]["config"]["run_dir"]
    assert all(row["agent_name"] == "tool_agent" for row in rows.values())
    for task_id, row in rows.items():
        info = row["extra_info"]
        assert set(info["tools_kwargs"]) == set(verl_tools(out))
        seeds = {kw["create_kwargs"]["seed"] for kw in info["tools_kwargs"].values()}
        assert seeds == {info["interaction_kwargs"]["seed"]}
        assert all(kw["create_kwargs"]["task_id"] == task_id
                   and kw["create_kwargs"]["run_dir"] == run_dir
                   for kw in info["tools_kwargs"].values())
    # What the user withholds is carried by the rl row itself (no tasks/ join needed).
    assert any(r["extra_info"]["interaction_kwargs"]["user_withholds"] for r in rows.values())
    # The seed is the row's own, stable across exports.
    export(Path(run_dir), "verl", out.parent / "again")
    again = {r["extra_info"]["task_id"]: r for r in read_rows(out.parent / "again" / "data")}
    assert {t: r["extra_info"]["interaction_kwargs"]["seed"] for t, r in again.items()} == {
        t: r["extra_info"]["interaction_kwargs"]["seed"] for t, r in rows.items()
    }


def test_verl_091_loads_the_tools_as_its_own_base_tools(exported: tuple[Path, dict]) -> None:
    tools = verl_tools(exported[0])
    assert all(isinstance(t, AgentmillTool) and isinstance(t, BaseTool) for t in tools.values())
    assert tools["cancel_pending_order"].tool_schema.function.name == "cancel_pending_order"
    assert not hasattr(__import__("verl"), "interactions")  # 0.9.1: no Interaction to play


def test_a_verl_091_tool_only_rollout_is_bound_by_create_kwargs_and_scored(
    exported: tuple[Path, dict],
) -> None:
    """0.9.1's loop has no user: the policy's calls go to the task's world (opened by the
    first call from its create_kwargs), its reply ends the rollout, and the reward loop gets
    the environment's total (outcome + process)."""
    _, rows = exported
    row = rows[first_task()]

    async def main() -> None:
        loop = tool_loop(verl_tools(exported[0]))
        assert await tool_only_rollout(loop, row, [LOOKUP, CANCEL]) == 1.0
        # A repeated call costs the repetition points, as in the environment's own reward.
        assert await tool_only_rollout(loop, row, [LOOKUP, LOOKUP, CANCEL]) == 0.95
        # Claiming success without a call: outcome 0, a clean process (0.2 x 1).
        assert await tool_only_rollout(loop, row, [], reply=REPLY) == pytest.approx(0.2)
        # Rollouts of one row run side by side, each in its own world.
        both = await asyncio.gather(
            tool_only_rollout(loop, row, [LOOKUP, CANCEL]),
            tool_only_rollout(loop, row, [LOOKUP], reply="I could not cancel it."),
        )
        assert both == [1.0, pytest.approx(0.2)]

    asyncio.run(main())


def test_calls_of_one_turn_open_one_world_and_a_call_bound_elsewhere_is_refused(
    exported: tuple[Path, dict],
) -> None:
    _, rows = exported
    first, other = rows[first_task()], next(r for t, r in rows.items() if t != first_task())

    async def main() -> None:
        loop = tool_loop(verl_tools(exported[0]))
        data = agent_data(first)
        lookup, cancel = await asyncio.gather(call(loop, data, *LOOKUP), call(loop, data, *CANCEL))
        assert json.loads(lookup) == {"user_id": "USR-1001"}
        assert json.loads(cancel)["status"] == "cancelled"
        record = json.loads(data.extra_fields["agentmill_rollout"])
        assert record["task_id"] == first_task()
        assert record["final_state"]["orders"]["ORD-5001"]["status"] == "cancelled"
        # The same rollout, but a call whose create_kwargs name another task.
        stray = AgentData(
            messages=data.messages, image_data=None, video_data=None, audio_data=None,
            mm_processor_kwargs=None, metrics={}, request_id=data.request_id,
            tools_kwargs=other["extra_info"]["tools_kwargs"],
        )
        error = json.loads(await call(loop, stray, *LOOKUP))["error"]
        assert error["type"] == "wrong_environment" and first_task() in error["message"]
        # A tool outside verl's global list never reaches the environment: verl answers it.
        assert (await call(loop, data, "teleport", {})).startswith("Unknown function")

    asyncio.run(main())


async def interaction_rollout(
    interaction: Any, loop: Any, row: dict, calls: list
) -> tuple[list, list]:
    """One multi-turn rollout as verl b178a3c's ToolAgentLoop plays it: start_interaction under
    the request id, tool rounds, then the assistant's reply goes to generate_response."""
    data = agent_data(row)
    kwargs = row["extra_info"]["interaction_kwargs"]
    await interaction.start_interaction(data.request_id, **kwargs)
    answers = []
    for name, arguments in calls:
        data.messages.append({"role": "assistant", "content": f"<tool_call>{name}</tool_call>"})
        answer = await call(loop, data, name, arguments)
        answers.append(json.loads(answer))
        data.messages.append({"role": "tool", "content": answer})
    data.messages.append({"role": "assistant", "content": REPLY})
    terminate, text, score, _ = await interaction.generate_response(
        data.request_id, data.messages, **kwargs
    )
    if score is not None:
        data.turn_scores.append(score)
    assert terminate and text == ""
    assert "agentmill_rollout" not in data.extra_fields  # the user's score is the reward
    return answers, data.turn_scores


def interaction_from_yaml(out: Path) -> AgentmillInteraction:
    """The Interaction as b178a3c's registry builds it from the exported YAML."""
    item = yaml.safe_load((out / "verl" / "interaction_config.yaml").read_text())["interaction"][0]
    return AgentmillInteraction(config={**item["config"], "name": item["name"]})


def test_a_b178a3c_multi_turn_exchange_with_the_simulated_user(
    exported: tuple[Path, dict],
) -> None:
    out, rows = exported
    first = rows[first_task()]

    async def main() -> None:
        interaction, loop = interaction_from_yaml(out), tool_loop(verl_tools(out))
        before = live_rollouts()  # tool-only rollouts of other tests stay until pushed out
        answers, scores = await interaction_rollout(interaction, loop, first, [LOOKUP, CANCEL])
        assert answers[0] == {"user_id": "USR-1001"}
        assert answers[1]["status"] == "cancelled"
        assert scores == [1.0]
        extra = {**first["extra_info"], "turn_scores": scores}
        assert compute_score(first["data_source"], "", "", extra) == {
            "score": 1.0, "finished": True
        }
        _, repeated = await interaction_rollout(interaction, loop, first, [LOOKUP, LOOKUP, CANCEL])
        assert repeated == [0.95]
        both = await asyncio.gather(
            interaction_rollout(interaction, loop, first, [LOOKUP, CANCEL]),
            interaction_rollout(interaction, loop, first, [LOOKUP]),
        )
        assert [s for _, s in both] == [[1.0], [0.2]]
        assert live_rollouts() == before  # finished rollouts are let go

    asyncio.run(main())


def test_without_a_binding_tools_answer_an_error_and_cut_rollouts_score_zero(
    exported: tuple[Path, dict],
) -> None:
    out, rows = exported
    loop = tool_loop(verl_tools(out))
    unbound = {**rows[first_task()], "extra_info": {
        **rows[first_task()]["extra_info"], "tools_kwargs": {}}}
    text = asyncio.run(call(loop, agent_data(unbound), *LOOKUP))
    assert json.loads(text)["error"]["type"] == "no_environment"
    assert compute_score("agentmill", "", "", {"turn_scores": []}) == {
        "score": 0.0, "finished": False
    }
    # Calls were made (four turns) but their record did not arrive: not scored as no calls.
    bound = {**rows[first_task()]["extra_info"], "turn_scores": [], "num_turns": 4}
    assert compute_score("agentmill", REPLY, "", bound) == {"score": 0.0, "finished": False}
    assert compute_score("agentmill", REPLY, "", {**bound, "num_turns": 2})["finished"] is True


def test_the_agents_words_leave_out_tool_calls_and_answers() -> None:
    answer = '{"status": "cancelled", "note": "Order ORD-5001 is cancelled."}'
    response = (f'<tool_call>{{"name": "x", "arguments": {{}}}}</tool_call>user\n'
                f"<tool_response>\n{answer}\n</tool_response>\nassistant\nDone, thanks.")
    words = agent_words(response, [answer])
    assert "ORD-5001" not in words and words.endswith("Done, thanks.")


def test_without_verl_the_adapters_stand_alone_with_its_signatures(
    exported: tuple[Path, dict],
) -> None:
    """Where verl is not installed (the mill's own workers), the module imports and its tool
    works with the same calls, on stand-in bases."""
    import subprocess
    import sys

    script = f"""
import asyncio, json, sys
sys.modules["verl"] = None  # as if verl were not installed
import pipelines.verl_env as v
assert v.BaseTool.__module__ == "pipelines.verl_env", v.BaseTool
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.test_rollout import roles_answer
registry.register(ModelConfig(backend="scripted", model="roles"), ScriptedModel(roles_answer))
tool = v.AgentmillTool({{"type": "native", "run_dir": {str(exported[0].parent / "run")!r}}},
                       {{"type": "function", "function": {{"name": "find_user_id_by_email"}}}})
class Data:
    request_id = "r1"
    messages = [{{"role": "user", "content": "Cancel my order."}}]
    extra_fields = {{}}
async def main():
    iid, _ = await tool.create(create_kwargs={{"task_id": {first_task()!r}, "seed": 1}})
    response, _, _ = await tool.execute(iid, {{"email": "maya.okafor@example.com"}},
                                        agent_data=Data())
    print(response.text)
asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"user_id": "USR-1001"}
