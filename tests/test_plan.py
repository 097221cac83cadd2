"""`agentmill plan`: token counts per role from a finished run, scaled to N episodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import load_config
from pipelines.plan import PlanError, make_plan, read_manifest

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "example_run"


def manifest(tasks: int = 4) -> dict:
    return {
        "planned": {"agents": 2, "tasks": tasks},
        "tokens": {
            "agent": {"prompt": 4000, "completion": 400, "requests": 12},
            "user": {"prompt": 800, "completion": 200, "requests": 6},
            "tool": {"prompt": 1200, "completion": 300, "requests": 10},
            "judge": {"prompt": 1000, "completion": 100, "requests": 4},
            "synthesizer": {"prompt": 600, "completion": 600, "requests": 6},
        },
    }


def test_tokens_and_requests_scale_per_role() -> None:
    plan = make_plan(load_config(None), 1000, manifest(tasks=4))
    need = {r.role: r for r in plan.roles}
    assert need["agent"].prompt == 1_000_000 and need["agent"].completion == 100_000
    assert need["agent"].requests == 3000 and need["tool"].requests == 2500
    assert plan.sample_episodes == 4
    # One embedded engine plays every role: its tokens are the sum.
    (engine,) = plan.engines
    assert engine.tokens == sum(r.tokens for r in plan.roles) == 2_300_000
    assert engine.tokens_per_second is None and engine.gpu_hours is None and plan.gpu_hours is None


def test_gpu_hours_from_a_presets_stated_throughput() -> None:
    config = load_config(
        None,
        {
            **{f"models.{r}.preset": "qwen3-235b-a22b-fp8" for r in ("user", "agent", "tool")},
            "models.judge.backend": "openai",
            "models.judge.model": "judge",
            "models.synthesizer.backend": "openai",
            "models.synthesizer.model": "judge",
        },
    )
    plan = make_plan(config, 40_000, manifest(tasks=4))
    moe, judge = plan.engines
    assert sorted(moe.roles) == ["agent", "tool", "user"] and moe.gpus == 4
    assert moe.tokens == 10_000 * (4400 + 1000 + 1500)
    assert moe.tokens_per_second == 7787.0 and "preset qwen3-235b-a22b-fp8" in moe.throughput_from
    assert moe.gpu_hours == pytest.approx(moe.tokens / 7787 / 3600 * 4, abs=0.01)
    assert judge.tokens_per_second is None and plan.gpu_hours is None
    given = make_plan(config, 40_000, manifest(tasks=4), tokens_per_second=2000.0)
    assert all(e.tokens_per_second == 2000.0 for e in given.engines)
    assert given.gpu_hours == pytest.approx(
        sum(e.tokens / 2000 / 3600 * e.gpus for e in given.engines), abs=0.02
    )


def test_parallelism_in_engine_args_counts_gpus() -> None:
    config = load_config(
        None,
        {
            "models.agent.preset": "kimi-k2-instruct",
            "models.agent.engine_args": {"pipeline_parallel_size": 2},
        },
    )
    plan = make_plan(config, 10, manifest(), tokens_per_second=1000.0)
    kimi = next(e for e in plan.engines if "Kimi" in e.model)
    assert kimi.gpus == 32


def test_a_run_without_token_counts_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no token counts per role"):
        make_plan(load_config(None), 10, {"planned": {"tasks": 2}, "tokens": {}}, source="x")
    with pytest.raises(PlanError, match=r"manifest\.json: no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(PlanError, match="not JSON"):
        read_manifest(tmp_path)


def test_cli_plan_on_the_example_run(tmp_path: Path) -> None:
    config = tmp_path / "big.yaml"
    config.write_text("models:\n  agent: {preset: qwen3-235b-a22b-fp8}\n")
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["plan", "--config", str(config), "--episodes", "30000", "--from-run", str(EXAMPLE),
         "--tokens-per-second", "5000", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    sample = json.loads((EXAMPLE / "manifest.json").read_text())
    scale = 30000 / sample["planned"]["tasks"]
    assert data["roles"]["agent"]["prompt"] == round(sample["tokens"]["agent"]["prompt"] * scale)
    assert data["gpu_hours"] == pytest.approx(
        sum(e["gpu_hours"] for e in data["engines"]), abs=0.05
    )
    assert {tuple(e["roles"]) for e in data["engines"]} == {
        ("user", "tool", "judge", "synthesizer"), ("agent",)
    }
    table = runner.invoke(
        app, ["plan", "--config", str(config), "--episodes", "30000", "--from-run", str(EXAMPLE)],
        env={"COLUMNS": "200"},
    )
    assert table.exit_code == 0, table.output
    assert "GPU-hours" in table.output and "preset qwen3-235b-a22b-fp8" in table.output


def test_cli_plan_defaults_to_the_configs_out_and_explains_a_missing_run(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "small")
    config = tmp_path / "c.yaml"
    config.write_text(f"out: {tmp_path / 'small'}\n")
    ok = CliRunner().invoke(app, ["plan", "--config", str(config), "--episodes", "5", "--json"])
    assert ok.exit_code == 0, ok.output
    missing = CliRunner().invoke(
        app, ["plan", "--episodes", "5", "--from-run", str(tmp_path / "none")]
    )
    assert missing.exit_code == 2
    assert "no manifest" in missing.output and "none" in missing.output
