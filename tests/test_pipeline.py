"""The whole mill on Beam's in-process runner, with scripted models in every role."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest

from pipelines.config import ROLES, load_config
from pipelines.parquet_io import read_rows
from pipelines.run import run
from schemas import arrow
from schemas.records import Task, Trajectory
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from tests.helpers import role_model


def scripted_config(out: Path, episodes: int, name: str = "scripted", **extra):
    overrides = {"out": str(out), "episodes": episodes, **extra}
    for role in ROLES:
        overrides[f"models.{role}.backend"] = "scripted"
        overrides[f"models.{role}.model"] = name
    return load_config(None, overrides)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def test_mill_writes_every_output_and_counts_reconcile(run_dir: Path) -> None:
    config = scripted_config(run_dir, episodes=7)
    manifest = run(config)

    for folder in ("toolspecs", "agents", "tasks", "trajectories", "sft", "rl", "rejected",
                   "failures"):
        files = list((run_dir / folder).glob("*.parquet"))
        assert files, f"{folder}/ has no Parquet file"
    assert (run_dir / "manifest.json").exists() and (run_dir / "README.md").exists()

    counts = manifest["counts"]
    assert counts["tasks"] == 7 and counts["agents"] == 4
    assert counts["tasks"] == counts["sft"] + counts["rejected"] + sum(
        manifest["failures_by_stage"].get(s, 0) for s in ("episodes", "judge")
    )
    assert manifest["reconcile"]["ok"]
    assert counts["rl"] == counts["tasks"]
    assert set(manifest["tokens"]) >= {"user", "agent", "tool", "synthesizer"}
    assert manifest["tokens"]["agent"]["requests"] > 0
    assert manifest["fingerprint"] == config.fingerprint()
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["counts"] == counts

    # SFT rows: typed messages, JSON-text tools, tool calls valid against offered schemas.
    table = pq.read_table(next((run_dir / "sft").glob("*.parquet")))
    assert table.schema.equals(arrow.SFT_SCHEMA)
    for row in table.to_pylist():
        tools = {t["function"]["name"]: t["function"] for t in json.loads(row["tools"])}
        for message in row["messages"]:
            for call in message["tool_calls"] or []:
                fn = call["function"]
                jsonschema.validate(json.loads(fn["arguments"]), tools[fn["name"]]["parameters"])

    # Stages' outputs read back as records.
    for row in read_rows(run_dir / "tasks"):
        assert arrow.from_row(Task, row).id == row["id"]
    for row in read_rows(run_dir / "trajectories"):
        trajectory = arrow.from_row(Trajectory, row)
        assert trajectory.messages[0].role == "system"


def test_rerun_with_same_config_gives_same_ids(tmp_path: Path) -> None:
    first = run(scripted_config(tmp_path / "a", episodes=3, seed=5))
    second = run(scripted_config(tmp_path / "b", episodes=3, seed=5))
    ids = lambda out: sorted(r["id"] for r in read_rows(out / "tasks"))  # noqa: E731
    assert ids(tmp_path / "a") == ids(tmp_path / "b")
    assert first["fingerprint"] == second["fingerprint"]


def test_bad_spec_file_becomes_failures_and_the_run_goes_on(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    library = Path(__file__).resolve().parents[1] / "toolspecs" / "library" / "travel.json"
    (specs / "travel.json").write_text(library.read_text())
    (specs / "broken.json").write_text("{not json")
    (specs / "bad_tool.json").write_text(
        json.dumps([{"name": "bad tool!", "description": "x", "domain": "travel"}])
    )
    manifest = run(
        scripted_config(tmp_path / "run", episodes=2, toolspecs=[str(specs)])
    )
    failures = read_rows(tmp_path / "run" / "failures")
    load_failures = [f for f in failures if f["stage"] == "load_toolspecs"]
    assert len(load_failures) == 2
    assert any("broken.json" in f["error"] and f["error_type"] == "JSONDecodeError"
               for f in load_failures)
    assert any("bad_tool.json" in f["source"] and "/0/name" in f["error"]
               for f in load_failures)
    assert manifest["counts"]["toolspecs"] == 6
    assert manifest["counts"]["tasks"] == 2 and manifest["reconcile"]["ok"]


def test_episode_failures_are_recorded_with_raw_output(tmp_path: Path) -> None:
    """An agent that never answers usable JSON: every episode is a Failure, none is lost."""
    name = "broken-agent"
    config = scripted_config(tmp_path / "run", episodes=3, name=name)
    base = role_model({"agent": lambda request: "I refuse to answer in JSON"})
    registry.register(ModelConfig(backend="scripted", model=name), base)
    try:
        manifest = run(config)
    finally:
        registry.clear()
    failures = read_rows(tmp_path / "run" / "failures")
    episode_failures = [f for f in failures if f["stage"] == "episodes"]
    assert len(episode_failures) == 3
    assert all(f["raw_output"] == "I refuse to answer in JSON" for f in episode_failures)
    assert manifest["counts"]["sft"] == 0 and manifest["reconcile"]["ok"]
    assert list((tmp_path / "run" / "sft").glob("*.parquet")), "an empty output still has a file"
    assert manifest["failures_by_type"] == {"episodes:EpisodeError": 3}


def test_episodes_start_while_tasks_are_still_being_written(tmp_path: Path) -> None:
    """Tasks stream into episodes: no join waits for the last task before the first episode
    (that barrier left the engine idle for ~21 s at 1,500 episodes)."""
    import asyncio
    import time

    from simulators.llm.scripted import ScriptedModel

    log: list[tuple[float, str]] = []

    class Paced(ScriptedModel):
        async def generate(self, messages, schema, sampling):  # type: ignore[no-untyped-def]
            system = next((m["content"] for m in messages if m["role"] == "system"), "")
            kind = (
                "task" if system.startswith("You write test tasks")
                else "agent" if system.startswith("You design AI assistants")
                else "episode"  # the user, agent, tool simulator and judge
            )
            log.append((time.monotonic(), kind))
            await asyncio.sleep(0.05)
            return await super().generate(messages, schema, sampling)

    name = "paced"
    registry.register(ModelConfig(backend="scripted", model=name), Paced(name=name))
    try:
        manifest = run(scripted_config(tmp_path / "run", 12, name=name, in_flight=3))
    finally:
        registry.clear()
    assert manifest["reconcile"]["ok"] and manifest["counts"]["rl"] == 12
    last_task = max(t for t, kind in log if kind == "task")
    episode_requests = [t for t, kind in log if kind == "episode"]
    assert any(t < last_task for t in episode_requests), "episodes waited for every task"
