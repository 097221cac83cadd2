"""Fault injection: every fault goes through the production retry paths; runs complete and
reconcile; what cannot be saved becomes a Failure with its stage, error and raw output; a dead
server trips the failure brake; API keys never leak."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from pipelines.batching import RunStopped
from pipelines.parquet_io import read_column, read_rows
from pipelines.run import run
from schemas.records import Message
from simulators.ask import RoleOutputError, ask
from simulators.llm import registry
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.errors import ModelError
from simulators.llm.faults import FAULTS, SCHEMA_BREAKER, even_rates, faulty_model
from simulators.llm.scripted import ScriptedModel
from tests.test_pipeline import scripted_config

SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
    "additionalProperties": False,
}
ANSWER = {"message": "a perfectly good answer, long enough to cut in half"}


def _ask(model, attempts: int = 3) -> tuple[object, dict]:
    usage: dict = {}
    messages = [Message(role="user", content="hi")]

    async def go():
        try:
            return await ask(model, "user", usage, messages, Sampling(seed=1),
                             schema=SCHEMA, attempts=attempts)
        finally:
            await model.close()

    return asyncio.run(go()), usage


@pytest.mark.parametrize("fault", ["429", "5xx", "timeout", "drop"])
def test_transport_faults_are_retried_with_backoff_then_raise(fault: str) -> None:
    inner = ScriptedModel([ANSWER] * 10)
    always = faulty_model(inner, {fault: 1.0}, max_retries=3)
    with pytest.raises(ModelError, match="gave up after 4 attempts"):
        _ask(always)
    assert always.faults.injected == Counter({fault: 4}) and inner.asked == 0

    sometimes = faulty_model(ScriptedModel([ANSWER] * 10), {fault: 0.5}, seed=4, max_retries=20)
    completion, usage = _ask(sometimes)
    assert completion.parsed == ANSWER
    assert usage["user"].retries == sometimes.faults.injected[fault] > 0


@pytest.mark.parametrize(
    ("fault", "raw"),
    [("empty", ""), ("truncated", json.dumps(ANSWER)[: len(json.dumps(ANSWER)) // 2]),
     ("schema", SCHEMA_BREAKER)],
)
def test_output_faults_are_asked_again_then_fail_with_the_raw_output(fault: str, raw: str) -> None:
    inner = ScriptedModel([ANSWER] * 10)
    always = faulty_model(inner, {fault: 1.0})
    with pytest.raises(RoleOutputError) as failed:
        _ask(always, attempts=3)
    assert failed.value.raw_output == raw and failed.value.role == "user"
    assert always.faults.injected == Counter({fault: 3}) and inner.asked == 3

    sometimes = faulty_model(ScriptedModel([ANSWER] * 10), {fault: 0.5}, seed=2)
    completion, usage = _ask(sometimes, attempts=10)
    assert completion.parsed == ANSWER
    assert usage["user"].requests == sometimes.faults.injected[fault] + 1


def test_unknown_fault_names_and_rates_over_one_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown faults"):
        faulty_model(ScriptedModel(), {"503": 0.1})
    with pytest.raises(ValueError, match="more than 1"):
        faulty_model(ScriptedModel(), {"429": 0.7, "5xx": 0.7})


def _run_with_faults(tmp_path: Path, name: str, rate, episodes: int, **settings):
    model = faulty_model(ScriptedModel(name=name), rate, seed=7)
    config = scripted_config(tmp_path / "run", episodes=episodes, name=name, **settings)
    registry.register(ModelConfig(backend="scripted", model=name), model)
    try:
        return run(config), model.faults
    finally:
        registry.clear()


def _assert_reconciles(out: Path, manifest: dict) -> None:
    counts = manifest["counts"]
    failures = read_rows(out / "failures")
    late = Counter(f["stage"] for f in failures if f["stage"] in ("episodes", "judge"))
    assert counts["tasks"] == counts["sft"] + counts["rejected"] + sum(late.values())
    assert manifest["reconcile"]["ok"]
    for folder in ("tasks", "trajectories", "sft", "rejected"):
        ids = read_column(out / folder, "id")
        assert len(ids) == len(set(ids)), f"duplicate ids in {folder}/"
    trajectory_tasks = read_column(out / "trajectories", "task_id")
    assert len(trajectory_tasks) == len(set(trajectory_tasks))


def test_a_run_with_20_percent_faults_completes_and_reconciles_exactly(tmp_path: Path) -> None:
    manifest, faults = _run_with_faults(tmp_path, "faults20", 0.2, episodes=24)
    _assert_reconciles(tmp_path / "run", manifest)
    assert set(faults.injected) == set(FAULTS), faults.injected  # every kind happened
    assert sum(faults.injected.values()) > 50
    retries = sum(t["retries"] for t in manifest["tokens"].values())
    transport = sum(faults.injected[f] for f in ("429", "5xx", "timeout", "drop"))
    assert 0 < retries <= transport
    planned = manifest["planned"]["tasks"]
    lost = manifest["failures_by_stage"]
    assert manifest["counts"]["tasks"] + lost.get("tasks", 0) + 2 * lost.get("agents", 0) >= planned


def test_faults_that_outlast_the_retries_become_failures_with_stage_error_and_raw_output(
    tmp_path: Path,
) -> None:
    rates = even_rates(0.4, ("empty", "truncated", "schema"))
    manifest, _ = _run_with_faults(
        tmp_path, "faults40", rates, episodes=16,
        **{"attempts": 12, "control.max_failure_rate": 1.0},
    )
    out = tmp_path / "run"
    _assert_reconciles(out, manifest)
    failures = [f for f in read_rows(out / "failures") if f["stage"] == "episodes"]
    assert failures, "at 40% answer faults some episodes must fail"
    for failure in failures:
        assert failure["error_type"] == "EpisodeError"
        assert "no usable answer after 3 attempts" in failure["error"]
        assert failure["raw_output"] is not None
    assert {f["raw_output"] for f in failures} & {"", SCHEMA_BREAKER}
    assert manifest["counts"]["sft"] + manifest["counts"]["rejected"] > 0  # the rest survived


def test_a_dead_server_trips_the_failure_brake_early(tmp_path: Path) -> None:
    model = faulty_model(ScriptedModel(), {"5xx": 1.0})
    config = scripted_config(tmp_path / "run", episodes=40, name="dead",
                             **{"control.failure_rate_after": 3, "in_flight": 1})
    registry.register(ModelConfig(backend="scripted", model="dead"), model)
    try:
        with pytest.raises(RunStopped, match=r"agents: 3 of 3 failed \(100%\)") as stopped:
            run(config)
    finally:
        registry.clear()
    assert "max_failure_rate" in str(stopped.value)
    # 3 agents x 5 attempts (max_retries 4) were spent, not 20 agents' and 40 episodes' worth.
    assert model.faults.injected == Counter({"5xx": 15})


def test_api_keys_never_reach_manifest_logs_or_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-agentmill-TEST-0123456789abcdef"
    monkeypatch.setenv("AGENTMILL_API_KEY", secret)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    name = "keyed"
    model = faulty_model(ScriptedModel(name=name), {"5xx": 0.45}, api_key=secret, seed=3,
                         max_retries=1)
    settings = {f"models.{r}.api_key": secret
                for r in ("user", "agent", "tool", "judge", "synthesizer")}
    config = scripted_config(tmp_path / "run", episodes=6, name=name,
                             **settings, **{"control.max_failure_rate": 1.0})
    registry.register(ModelConfig(backend="scripted", model=name), model)
    try:
        manifest = run(config)
    finally:
        registry.clear()
    assert model.faults.injected["5xx"] > 0  # the server echoed the key back in error bodies
    assert any(secret not in f["error"] and "***" in f["error"]
               for f in read_rows(tmp_path / "run" / "failures")), "no give-up was recorded"
    leaks = [p for p in (tmp_path / "run").rglob("*")
             if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []
    assert secret not in json.dumps(manifest)
    assert manifest["config"]["models"]["agent"]["api_key"] == "***"
    captured = capsys.readouterr()
    assert secret not in captured.err and secret not in captured.out
    assert secret not in caplog.text
