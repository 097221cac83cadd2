"""Identical tasks in two slots are two tasks: each has its own id (the slot is part of it), is
played once, and every stage (checkpoints and resume included) keys them alike, so none is
merged into another or lost on resume."""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.parquet_io import count_rows, read_column, read_rows
from pipelines.run import run
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel, ScriptRequest, schema_instance
from tests import helpers
from tests.test_pipeline import scripted_config
from tests.test_resume import _area, _slow_cli, _wait_for_checkpointed_episodes

ROOT = Path(__file__).resolve().parents[1]
RETAIL = ROOT / "data" / "domains" / "retail"


def _domain(tmp_path: Path, distinct: int, copies: int) -> Path:
    """The retail domain with `distinct` tasks (variants of its own), each listed `copies`
    times, interleaved."""
    folder = tmp_path / "retail"
    shutil.copytree(RETAIL, folder)
    base = json.loads((RETAIL / "tasks.json").read_text())
    tasks = []
    for index in range(distinct):
        task = dict(base[index % len(base)])
        task["goal"] = f"{task['goal']} (case {index})"
        tasks.append(task)
    (folder / "tasks.json").write_text(json.dumps(tasks * copies))
    return folder


def _assert_whole(out: Path, slots: int, distinct: int) -> dict[str, Any]:
    """Every task slot once in every folder, however many share their content; counts
    reconcile."""
    manifest = json.loads((out / "manifest.json").read_text())
    tasks = read_rows(out / "tasks", columns=["id", "goal", "slot"])
    ids = [t["id"] for t in tasks]
    assert len(ids) == len(set(ids)) == slots
    assert sorted(t["slot"] for t in tasks) == list(range(slots))
    assert len({t["goal"] for t in tasks}) == distinct  # identical content, distinct tasks
    assert sorted(read_column(out / "rl", "task_id")) == sorted(ids)
    per_task = Counter(read_column(out / "trajectories", "task_id"))
    assert set(per_task) <= set(ids) and max(per_task.values(), default=1) == 1
    judged = read_column(out / "sft", "id") + read_column(out / "rejected", "id")
    assert len(judged) == len(set(judged))
    played = [f for f in read_rows(out / "failures") if f["stage"] in ("episodes", "judge")]
    assert len(judged) + len(played) == slots
    assert manifest["reconcile"]["ok"] and manifest["counts"]["tasks"] == slots
    return manifest


def test_duplicated_domain_tasks_are_each_played_once(tmp_path: Path) -> None:
    domain = _domain(tmp_path, distinct=4, copies=3)
    out = tmp_path / "run"
    config = scripted_config(out, episodes=12, domain=str(domain))
    run(config)
    _assert_whole(out, slots=12, distinct=4)
    second = run(config)  # a rerun reuses every episode and judgement, and counts alike
    assert second["resume"]["reused"]["episodes"] == 12 == second["resume"]["reused"]["judge"]
    _assert_whole(out, slots=12, distinct=4)


def test_an_id_a_domain_file_gives_twice_is_a_named_failure(tmp_path: Path) -> None:
    from toolspecs.domain import load_domain

    domain = _domain(tmp_path, distinct=3, copies=1)
    tasks = json.loads((domain / "tasks.json").read_text())
    tasks[0]["id"] = tasks[2]["id"] = "task-same"
    (domain / "tasks.json").write_text(json.dumps(tasks))
    loaded = load_domain(domain)
    assert [t.slot for t in loaded.tasks] == [0, 1]
    (failure,) = loaded.failures
    assert failure.error_type == "DuplicateTaskId" and "task 0's" in failure.error


def _same_task_model(request: ScriptRequest) -> Any:
    """Schema-valid answers, with the same task written for every slot of an agent."""
    import random

    seed = 0 if helpers.role_of(request) == "synthesizer" else len(request.messages)
    return schema_instance(request.schema or {"type": "string"}, random.Random(seed))


def test_identical_generated_tasks_survive_a_resume_without_losing_rows(tmp_path: Path) -> None:
    """Three tools make every agent the same agent; a model that writes the same task for the
    same difficulty then makes the task slots of one tier identical."""
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([t.model_dump(mode="json", exclude={"id"})
                                 for t in helpers.TOOLS]))
    out = tmp_path / "run"
    registry.register(ModelConfig(backend="scripted", model="same"),
                      ScriptedModel(_same_task_model))
    try:
        config = scripted_config(out, episodes=9, tasks_per_agent=1, name="same",
                                 toolspecs=[str(specs)], **{"control.checkpoint_every": 1})
        first = run(config)
        distinct = len(set(read_column(out / "tasks", "goal")))
        assert distinct < 9, "the model was meant to write identical tasks"
        _assert_whole(out, slots=9, distinct=distinct)
        # Lose half the episode checkpoints, as a kill would, and resume.
        area = Path(str(out / first["resume"]["checkpoint"]))
        parts = sorted((area / "episodes").glob("part-*.parquet"))
        for part in parts[len(parts) // 2:]:
            part.unlink()
        second = run(config)
    finally:
        registry.clear()
    assert second["resume"]["reused"]["tasks"] == 9
    assert 0 < second["resume"]["reused"]["episodes"] < 9
    _assert_whole(out, slots=9, distinct=distinct)
    assert second["counts"]["sft"] + second["counts"]["rejected"] == first["counts"]["sft"] + \
        first["counts"]["rejected"]


def test_sigkill_and_resume_with_duplicated_tasks(tmp_path: Path) -> None:
    distinct, copies = 12, 2
    domain = _domain(tmp_path, distinct=distinct, copies=copies)
    config = tmp_path / "slow.yaml"
    roles = {r: {"backend": "scripted", "model": "slow"}
             for r in ("user", "agent", "tool", "judge", "synthesizer")}
    config.write_text(json.dumps({"episodes": distinct * copies, "in_flight": 2,
                                  "domain": str(domain), "control": {"checkpoint_every": 2},
                                  "models": roles}))
    out = tmp_path / "run"
    proc = _slow_cli(["--config", str(config), "--out", str(out)], delay=0.05)
    area = _area(out)
    checkpointed = _wait_for_checkpointed_episodes(area, 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and checkpointed < distinct * copies
    assert not (out / "manifest.json").exists()

    rerun = _slow_cli(["--config", str(config), "--out", str(out)])
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    manifest = _assert_whole(out, slots=distinct * copies, distinct=distinct)
    assert checkpointed <= manifest["resume"]["reused"]["episodes"] < distinct * copies
    assert count_rows(out / "trajectories") == distinct * copies
