"""Resumable runs: checkpoints as work finishes, reuse, SIGKILL, Ctrl-C, the failure brake."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batching import RunStopped
from pipelines.parquet_io import count_rows, read_column, read_rows
from pipelines.resume import STAGES, WORK, Resume, checkpoint_rows, work_key, write_part
from pipelines.run import run
from schemas.records import Task
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.helpers import agent, role_model, task
from tests.test_pipeline import scripted_config

ROOT = Path(__file__).resolve().parents[1]


def _ids(out: Path, folder: str) -> list[str]:
    return read_column(out / folder, "id")


def _assert_complete(out: Path, episodes: int) -> dict:
    """The run folder holds every task exactly once, and counts reconcile."""
    manifest = json.loads((out / "manifest.json").read_text())
    tasks = _ids(out, "tasks")
    assert len(tasks) == episodes and len(set(tasks)) == episodes
    trajectories = read_rows(out / "trajectories", columns=["id", "task_id"])
    per_task = Counter(r["task_id"] for r in trajectories)
    assert max(per_task.values(), default=1) == 1, "a task was played twice"
    judged = _ids(out, "sft") + _ids(out, "rejected")
    assert len(judged) == len(set(judged)), "a trajectory was written twice"
    failed = [f for f in read_rows(out / "failures") if f["stage"] in ("episodes", "judge")]
    assert len(judged) + len(failed) == episodes
    assert manifest["reconcile"]["ok"]
    return manifest


def _register(name: str) -> ScriptedModel:
    model = ScriptedModel(name=name)
    registry.register(ModelConfig(backend="scripted", model=name), model)
    return model


def test_rerun_reuses_every_finished_stage_and_asks_the_model_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run(scripted_config(out, episodes=5, name="reuse"))
    assert first["resume"]["reused"] == dict.fromkeys(STAGES, 0)
    before = {f: sorted(_ids(out, f)) for f in ("tasks", "trajectories", "sft", "rejected")}

    model = _register("reuse")
    try:
        second = run(scripted_config(out, episodes=5, name="reuse"))
    finally:
        registry.clear()
    assert model.asked == 0, "finished work was recomputed"
    assert second["resume"]["reused"] == {"agents": 3, "tasks": 5, "episodes": 5, "judge": 5}
    assert {f: sorted(_ids(out, f)) for f in before} == before
    assert second["counts"] == first["counts"]
    _assert_complete(out, 5)


def test_reused_work_rebuilds_every_row_exactly_passed_and_rejected_alike(
    tmp_path: Path,
) -> None:
    """Each stage reads its checkpoint back in the shape it emits: a rerun that reuses
    everything writes the same rows, verdicts of both kinds included."""
    out = tmp_path / "run"
    folders = ("agents", "tasks", "trajectories", "sft", "rejected", "rl")

    def rows() -> dict[str, list[dict]]:
        return {f: sorted(read_rows(out / f), key=lambda r: json.dumps(r, sort_keys=True,
                                                                        default=str))
                for f in folders}

    config = scripted_config(out, episodes=7, name="rows")
    run(config)
    before = rows()
    assert before["sft"] and before["rejected"], "needs verdicts of both kinds"
    # Parts written before verdicts shared one record tagged theirs: they still read back.
    for part in (out / WORK / work_key(config) / "judge").glob("part-*.parquet"):
        table = pq.read_table(part)
        tags = ["passed" if json.loads(r)["passed"] else "rejected"
                for r in table.column("record").to_pylist()]
        table = table.set_column(table.schema.get_field_index("tag"), "tag", pa.array(tags))
        pq.write_table(table, part)
    model = _register("rows")
    try:
        run(scripted_config(out, episodes=7, name="rows"))
    finally:
        registry.clear()
    assert model.asked == 0
    assert rows() == before


def test_a_changed_config_does_not_reuse_stale_work(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run(scripted_config(out, episodes=3, name="model-a"))
    second = run(scripted_config(out, episodes=3, name="model-b"))
    assert first["fingerprint"] != second["fingerprint"]
    assert second["resume"]["reused"] == dict.fromkeys(STAGES, 0)
    area = Path(second["resume"]["checkpoint"]).name
    assert sorted(p.name for p in (out / WORK).iterdir()) == [area]
    models = {json.loads(row)["agent"] for row in read_column(out / "trajectories", "models")}
    assert models == {"scripted:model-b"}


def test_control_settings_do_not_change_the_fingerprint() -> None:
    base = scripted_config(Path("x"), episodes=3)
    tuned = scripted_config(Path("y"), episodes=3, **{"control.checkpoint_every": 1,
                                                       "control.max_failure_rate": 0.1})
    assert base.fingerprint() == tuned.fingerprint()
    assert base.fingerprint() != scripted_config(Path("x"), episodes=3, seed=9).fingerprint()


def test_duplicate_checkpoint_parts_give_no_duplicate_rows(tmp_path: Path) -> None:
    """A part written twice (say, a retried bundle) is read once per key."""
    out = tmp_path / "run"
    config = scripted_config(out, episodes=4)
    run(config)
    area = out / WORK / work_key(config)
    for stage in STAGES:
        for part in list((area / stage).glob("part-*.parquet")):
            shutil.copy(part, part.with_name(part.name.replace("part-", "part-9")))
    manifest = run(config)
    assert manifest["resume"]["reused"]["episodes"] == 4
    _assert_complete(out, 4)
    assert manifest["counts"]["trajectories"] == 4


def test_resume_keeps_only_work_that_fits_together(tmp_path: Path) -> None:
    """An episode whose task is not reused, or a task whose agent is not, is never reused."""
    config = scripted_config(tmp_path / "run", episodes=4, tasks_per_agent=2)
    area = tmp_path / "run" / WORK / work_key(config)
    spec = agent()
    kept = task(spec)
    orphan = Task.model_validate({**kept.model_dump(), "id": "", "agent_id": "agent_gone"})
    write_part(area / "agents", checkpoint_rows("0", [(spec, "")]))
    write_part(
        area / "tasks",
        checkpoint_rows("0", [(kept, spec.id)]) + checkpoint_rows("1", [(orphan, "agent_gone")]),
    )
    write_part(area / "tasks", checkpoint_rows("9", [(kept, spec.id)]))  # no such task slot
    (area / "episodes").mkdir()
    (area / "episodes" / ".tmp-part-x.parquet").write_bytes(b"half a file")  # a killed write
    resume = Resume.load(config)
    assert resume.reused() == {"agents": 1, "tasks": 1, "episodes": 0, "judge": 0}
    assert resume.control("tasks", config).skip == frozenset({"0"})


def _slow_cli(
    args: list[str], delay: float = 0.02, **kwargs: object
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.slow_cli", str(delay), "run", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **kwargs,  # type: ignore[arg-type]
    )


def _slow_config(tmp_path: Path, episodes: int) -> Path:
    path = tmp_path / "slow.yaml"
    roles = {r: {"backend": "scripted", "model": "slow"}
             for r in ("user", "agent", "tool", "judge", "synthesizer")}
    path.write_text(json.dumps({
        "episodes": episodes, "tasks_per_agent": 4, "in_flight": 2,
        "control": {"checkpoint_every": 2}, "models": roles,
    }))
    return path


def _wait_for_checkpointed_episodes(area: Path, at_least: int, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = count_rows(area / "episodes") if (area / "episodes").is_dir() else 0
        if done >= at_least:
            return done
        time.sleep(0.05)
    raise AssertionError(f"no {at_least} checkpointed episodes; {proc.communicate()}")


def _area(out: Path) -> Path:
    while not (out / WORK).is_dir() or not any((out / WORK).iterdir()):
        time.sleep(0.05)
    return next((out / WORK).iterdir())


def test_sigkill_mid_run_then_rerun_finishes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    episodes, out = 24, tmp_path / "run"
    config = _slow_config(tmp_path, episodes)
    proc = _slow_cli(["--config", str(config), "--out", str(out)])
    area = _area(out)
    checkpointed = _wait_for_checkpointed_episodes(area, 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    assert checkpointed < episodes

    rerun = _slow_cli(["--config", str(config), "--out", str(out)])
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    manifest = _assert_complete(out, episodes)
    reused = manifest["resume"]["reused"]
    assert checkpointed <= reused["episodes"] < episodes
    # Tasks stream into episodes, so the kill may come before every task was written; an
    # episode is reused only with its task, a task only with its agent.
    assert reused["episodes"] <= reused["tasks"] <= episodes
    assert 1 <= reused["agents"] <= episodes // 4
    assert f"{reused['episodes']} episodes" in stderr
    # Only the episodes that had not finished were played again.
    assert manifest["tokens"]["agent"]["requests"] > 0


def test_ctrl_c_stops_gracefully_and_the_next_run_resumes(tmp_path: Path) -> None:
    episodes, out = 24, tmp_path / "run"
    config = _slow_config(tmp_path, episodes)
    proc = _slow_cli(["--config", str(config), "--out", str(out)])
    area = _area(out)
    _wait_for_checkpointed_episodes(area, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "stopping: no new work starts" in stderr
    assert "run the same command again" in stderr and str(area) in stderr
    kept = count_rows(area / "episodes")
    assert 2 <= kept < episodes  # what finished is written, not the whole run
    assert not (out / "manifest.json").exists()

    rerun = _slow_cli(["--config", str(config), "--out", str(out)])
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    manifest = _assert_complete(out, episodes)
    assert manifest["resume"]["reused"]["episodes"] == kept


def test_failure_brake_stops_the_run_and_a_fixed_rerun_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = {"control.failure_rate_after": 4, "control.max_failure_rate": 0.5,
                "control.checkpoint_every": 1, "in_flight": 1}
    config = scripted_config(out, episodes=12, name="brake", **settings)
    broken = role_model({"agent": lambda request: "not JSON at all"})
    registry.register(ModelConfig(backend="scripted", model="brake"), broken)
    try:
        with pytest.raises(RunStopped) as stopped:
            run(config)
    finally:
        registry.clear()
    message = str(stopped.value)
    assert "episodes: 4 of 4 failed (100%)" in message and "max_failure_rate 50%" in message
    assert "run the same command again" in message
    assert stopped.value.exit_code == 1
    assert not (out / "manifest.json").exists()

    manifest = run(config)  # the model works again: the run resumes
    # The brake stops every stage; tasks stream into episodes, so at least the tasks of the
    # four failed episodes were written and are reused.
    assert 4 <= manifest["resume"]["reused"]["tasks"] <= 12
    assert manifest["resume"]["reused"]["episodes"] == 0
    _assert_complete(out, 12)
    assert manifest["counts"]["failures"] == 0  # failures are retried, not reused


def test_partly_checkpointed_stages_reuse_what_is_there_and_redo_the_rest(tmp_path: Path) -> None:
    """Lose some episode and judge parts (a kill before they were written): a rerun plays and
    judges exactly those again, and the data set is whole."""
    out = tmp_path / "run"
    config = scripted_config(out, episodes=6, **{"control.checkpoint_every": 1, "in_flight": 1})
    first = run(config)
    area = out / WORK / work_key(config)
    episodes = sorted((area / "episodes").glob("part-*.parquet"))
    judged = sorted((area / "judge").glob("part-*.parquet"))
    assert len(episodes) == len(judged) == 6  # one part per finished input
    for part in episodes[4:] + judged[2:]:
        part.unlink()
    second = run(config)
    assert second["resume"]["reused"] == {"agents": 3, "tasks": 6, "episodes": 4, "judge": 2}
    assert len(list((area / "judge").glob("part-*.parquet"))) == 6  # 4 judged again
    assert len(list((area / "episodes").glob("part-*.parquet"))) == 6  # 2 played again
    assert second["counts"]["trajectories"] == first["counts"]["trajectories"] == 6
    _assert_complete(out, 6)


def test_a_domain_run_resumes_its_episodes(tmp_path: Path) -> None:
    """A domain's agent and tasks come from files, not a checkpoint; its episodes are reused."""
    out = tmp_path / "run"
    retail = ROOT / "data" / "domains" / "retail"
    first = run(scripted_config(out, episodes=3, name="domain", domain=str(retail)))
    model = _register("domain")
    try:
        second = run(scripted_config(out, episodes=3, name="domain", domain=str(retail)))
    finally:
        registry.clear()
    assert model.asked == 0, "finished domain episodes were played again"
    assert second["resume"]["reused"] == {"agents": 0, "tasks": 0, "episodes": 3, "judge": 3}
    assert second["counts"] == first["counts"]
    _assert_complete(out, 3)


def test_edited_spec_files_do_not_reuse_work_made_from_the_old_text(tmp_path: Path) -> None:
    """Same config, same path, other content: a new checkpoint area, nothing reused."""
    specs = tmp_path / "specs"
    shutil.copytree(ROOT / "toolspecs" / "library", specs)
    out = tmp_path / "run"
    config = scripted_config(out, episodes=2, toolspecs=[str(specs)])
    run(config)
    old_area = work_key(config)
    first_file = sorted(specs.rglob("*.json"))[0]
    first_file.write_text(first_file.read_text().replace("description", "description", 1) + "\n")
    assert work_key(config) != old_area
    second = run(config)
    assert second["resume"]["reused"] == dict.fromkeys(STAGES, 0)
    assert [p.name for p in (out / WORK).iterdir()] == [work_key(config)]
    _assert_complete(out, 2)
