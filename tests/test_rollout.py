"""`agentmill rollout`: K plays of every rl/ task, rewards, pass^k, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.export import export
from pipelines.parquet_io import read_rows
from pipelines.rollout import RolloutError, pass_hat_k, rollout
from pipelines.run import run
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.helpers import agent_calls, agent_reply, role_of
from tests.test_environment import RETAIL, retail_tool
from tests.test_pipeline import scripted_config

RIGHT = [
    agent_calls(("find_user_id_by_email", {"email": "maya.okafor@example.com"})),
    agent_calls(("cancel_pending_order", {"order_id": "ORD-5001", "reason": "no longer needed"})),
    agent_reply("Order ORD-5001 is cancelled.", final=True),
]


def policy_answer(request) -> str:
    """Task 0's right calls, in order, whatever the task: reward 1 there, 0 elsewhere."""
    made = sum(1 for m in request.messages if m["role"] == "assistant")
    return RIGHT[min(made, len(RIGHT) - 1)]


def roles_answer(request):
    if role_of(request) == "tool":
        return retail_tool(request)
    if "done" in (request.schema or {}).get("properties", {}):
        return {"message": "yes please", "done": True}
    return {"message": "Please cancel my shoe order."}


@pytest.fixture
def retail_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    run(scripted_config(out, episodes=3, domain=str(RETAIL)))
    registry.register(ModelConfig(backend="scripted", model="roles"), ScriptedModel(roles_answer))
    registry.register(ModelConfig(backend="scripted", model="policy"), ScriptedModel(policy_answer))
    config = tmp_path / "roles.yaml"
    config.write_text(json.dumps({
        "models": {"user": {"backend": "scripted", "model": "roles"},
                   "tool": {"backend": "scripted", "model": "roles"}},
        "episode": {"failure_rate": 0.0},
    }))
    return out


def play(run_dir: Path, out: Path, k: int, **kwargs) -> dict:
    return rollout(
        run_dir, out, k, config_path=run_dir.parent / "roles.yaml",
        overrides={"models.agent.backend": "scripted", "models.agent.model": "policy"},
        **kwargs,
    )


def test_pass_hat_k_is_tau_benchs() -> None:
    # 4 tries, 2 successes: pass^1 = 2/4, pass^2 = C(2,2)/C(4,2) = 1/6; a perfect task: 1.
    assert pass_hat_k([(4, 2)], 1) == 0.5
    assert pass_hat_k([(4, 2)], 2) == pytest.approx(1 / 6, abs=1e-6)
    assert pass_hat_k([(4, 2), (4, 4)], 2) == pytest.approx((1 / 6 + 1) / 2, abs=1e-6)
    assert pass_hat_k([(1, 1)], 2) is None


def test_rollout_writes_scored_rollouts_and_pass_hat_k(retail_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rollouts"
    manifest = play(retail_run, out, k=2)
    counts = manifest["counts"]
    assert counts["tasks"] == 3 and counts["expected"] == 6
    assert manifest["reconcile"]["ok"] and counts["rollouts"] + counts["failures"] == 6
    rows = read_rows(out / "rollouts")
    assert len(rows) == counts["rollouts"] == 6
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row)
        parts = json.loads(row["reward_parts"])
        assert parts["process"] == row["process_reward"] and "repeated_calls" in parts
        assert row["messages"][0]["role"] == "system"
    first_task = json.loads(
        (RETAIL / "tasks.json").read_text())[0]["expected_outcome"]["state"]
    assert first_task == {"orders/ORD-5001/status": "cancelled"}
    rewarded = [row for row in rows if row["outcome_reward"] == 1.0]
    assert len(rewarded) == 2 and len({r["task_id"] for r in rewarded}) == 1
    assert {r["sample"] for r in rewarded} == {0, 1}
    # One task of three always succeeds, the others never: pass^1 = pass^2 = 1/3.
    assert manifest["pass_hat_k"] == {"1": pytest.approx(1 / 3, abs=1e-5),
                                      "2": pytest.approx(1 / 3, abs=1e-5)}
    assert manifest["means"]["all"]["rollouts"] == 6
    assert set(manifest["means"]) >= {"domain:retail", "all"}
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["pass_hat_k"] == manifest["pass_hat_k"]


def test_rollout_resumes_and_a_larger_k_adds_samples(retail_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rollouts"
    play(retail_run, out, k=1)
    parts = sorted((out / "rollouts").glob("*.parquet"))
    again = play(retail_run, out, k=1)
    assert again["counts"]["reused"] == 3
    assert sorted((out / "rollouts").glob("*.parquet")) == parts  # nothing replayed
    more = play(retail_run, out, k=2)
    assert more["counts"]["reused"] == 3 and more["counts"]["rollouts"] == 6
    samples = sorted((r["task_id"], r["sample"]) for r in read_rows(out / "rollouts"))
    assert len(samples) == len(set(samples)) == 6
    with pytest.raises(RolloutError, match="another policy"):
        rollout(retail_run, out, 1, config_path=retail_run.parent / "roles.yaml")


def test_failed_rollouts_are_failures_and_counts_reconcile(
    retail_run: Path, tmp_path: Path
) -> None:
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            return "not json at all"
        return policy_answer(request)

    registry.register(ModelConfig(backend="scripted", model="flaky"), ScriptedModel(flaky))
    manifest = rollout(
        retail_run, tmp_path / "out", 2, config_path=retail_run.parent / "roles.yaml",
        overrides={"models.agent.backend": "scripted", "models.agent.model": "flaky",
                   "episode.attempts": 1},
    )
    counts = manifest["counts"]
    assert counts["failures"] > 0 and manifest["reconcile"]["ok"]
    failures = read_rows(tmp_path / "out" / "failures")
    assert {f["stage"] for f in failures} == {"rollout_episode"}
    assert all("#" in f["input_id"] for f in failures)


def test_reward_one_rollouts_export_like_sft(retail_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rollouts"
    play(retail_run, out, k=2)
    summary = export(out, "trl", tmp_path / "trl")
    assert summary["splits"]["train"]["rows"] == 2  # only the reward-1 rollouts
    assert summary["source"].endswith("rollouts")


def test_cli_rollout_prints_pass_hat_k(retail_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "rollout", str(retail_run), "--out", str(tmp_path / "cli"), "--k", "2",
        "--backend", "scripted", "--model", "policy",
        "--config", str(retail_run.parent / "roles.yaml"),
    ])
    assert result.exit_code == 0, result.output
    assert "pass^k" in result.output and "0.333" in result.output
    missing = CliRunner().invoke(app, ["rollout", str(tmp_path), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "rl" in missing.output
