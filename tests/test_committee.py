"""A judge committee: several models vote, agreement is kept, and the card reports it beside the
judge's false-pass rate (trajectories the judges passed whose verifiable reward is 0)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from filters.judge import judge_committee
from pipelines.config import load_config
from pipelines.parquet_io import read_rows
from pipelines.run import run
from pipelines.stats import run_stats
from schemas.records import Message, Rubric, Task, Trajectory
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel, ScriptRequest
from tests import helpers
from tests.test_pipeline import scripted_config

TASK = Task(agent_id="a", goal="Cancel my order O-1 please.",
            rubric=Rubric(success_criteria=["The order is cancelled.", "The user is told."]))
TRAJECTORY = Trajectory(
    task_id=TASK.id, agent_id="a", persona_id="p", domain="shop", tools=[],
    messages=[Message(role="user", content="cancel O-1"),
              Message(role="assistant", content="Cancelled.")],
    end_reason="agent_final",
)


def grader(*scores: int, name: str) -> ScriptedModel:
    return ScriptedModel(
        [{f"c{i}": {"score": s, "reason": f"{name} saw it"} for i, s in enumerate(scores, 1)}],
        name=name,
    )


@pytest.mark.parametrize(
    ("voting", "passed", "agreement"), [("majority", False, 2 / 3), ("mean", True, 1 / 3)]
)
def test_votes_are_combined_and_agreement_kept(
    voting: Any, passed: bool, agreement: float
) -> None:
    """One judge passes it, two fail it (each leaves a criterion unmet); yet every criterion's
    mean is 2/3, above the threshold."""
    judges = [grader(2, 2, name="a"), grader(2, 0, name="b"), grader(0, 2, name="c")]
    usage: dict[str, Any] = {}
    result = asyncio.run(judge_committee(TRAJECTORY, TASK, judges, usage=usage, voting=voting,
                                         pass_threshold=0.5))
    verdict = result.judgement
    assert [v.passed for v in verdict.votes] == [True, False, False]
    assert verdict.score == pytest.approx(2 / 3) and verdict.passed is passed
    assert verdict.agreement == round(agreement, 4)
    assert "a: a saw it" in verdict.scores[0].reason and "c: c saw it" in verdict.scores[0].reason
    assert usage["judge"].requests == 3 == result.requests


def test_a_majority_passes() -> None:
    judges = [grader(2, 2, name="a"), grader(2, 1, name="b"), grader(0, 2, name="c")]
    verdict = asyncio.run(judge_committee(TRAJECTORY, TASK, judges)).judgement
    assert verdict.passed and verdict.agreement == round(2 / 3, 4)


def test_a_run_with_a_committee_reports_agreement_and_false_passes(tmp_path: Path) -> None:
    names = ["judge-a", "judge-b", "judge-c"]

    def lenient(request: ScriptRequest) -> Any:
        keys = request.schema["required"]  # type: ignore[index]
        return {k: {"score": 2, "reason": "looks done"} for k in keys}

    def strict(request: ScriptRequest) -> Any:
        keys = request.schema["required"]  # type: ignore[index]
        return {k: {"score": 0, "reason": "not shown"} for k in keys}

    config = scripted_config(tmp_path / "run", episodes=4)
    config = load_config(None, {
        **{f"models.{r}.backend": "scripted" for r in ("user", "agent", "tool", "synthesizer",
                                                       "judge")},
        **{f"models.{r}.model": "scripted" for r in ("user", "agent", "tool", "synthesizer",
                                                     "judge")},
        "out": config.out, "episodes": 4,
        "judge.models": [{"backend": "scripted", "model": n} for n in names],
    })
    base = helpers.role_model({})
    registry.register(ModelConfig(backend="scripted", model="scripted"), base)
    for name, respond in zip(names, (lenient, lenient, strict), strict=True):
        registry.register(ModelConfig(backend="scripted", model=name), ScriptedModel(respond))
    try:
        manifest = run(config)
    finally:
        registry.clear()
    sft = read_rows(tmp_path / "run" / "sft")
    rejected = [r for r in read_rows(tmp_path / "run" / "rejected") if not r["failed_checks"]]
    judged = sft + rejected
    assert judged, "no trajectory reached the committee"
    assert all(r["judge_agreement"] == round(2 / 3, 4) for r in judged)
    assert len(rejected) == 0  # two of three pass every one
    numbers = run_stats(tmp_path / "run")
    assert numbers["judge"]["agreement"] == round(2 / 3, 3)
    reward_0 = [r for r in judged if r["reward"] == 0]
    expected = round(sum(1 for r in sft if r["reward"] == 0) / len(reward_0), 4) if reward_0 \
        else None
    assert numbers["judge"]["false_pass_rate"] == expected
    assert manifest["tokens"]["judge"]["requests"] >= 3 * len(judged)
    body = (tmp_path / "run" / "README.md").read_text()
    assert "inter-judge agreement" in body and "false-pass rate" in body


def test_the_fingerprint_of_a_config_without_a_committee_is_unchanged() -> None:
    """Configs that name no committee keep the fingerprint they had before committees existed,
    so their checkpoints still resume."""
    import hashlib

    from schemas.records import canonical_json

    plain = load_config(None, {})
    body = plain.model_dump(mode="json", exclude={"out", "control", "reward"})
    for role in ("user", "agent", "tool", "judge", "synthesizer"):
        for field in ("api_key", "server_wait_s", "engine_restarts"):
            body["models"][role].pop(field, None)
        # Fields the vllm-server backend added later; unset, they leave the fingerprint alone.
        for field in ("engine_dir", "engine_linger_s", "engine_start_s", "server_command",
                      "engine_lease_timeout_s"):
            body["models"][role].pop(field, None)
    del body["judge"]["models"], body["judge"]["voting"]
    before = hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]
    assert plain.fingerprint() == before
    committee = load_config(None, {"judge.models": [{"backend": "scripted", "model": "x"}]})
    assert committee.fingerprint() != plain.fingerprint()
    assert load_config(None, {"judge.voting": "mean"}).fingerprint() != plain.fingerprint()
