"""What `--out` will and will not touch, and the lock that keeps two runs out of one folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines import outdir
from pipelines.cli import app
from pipelines.outdir import LOCK, MARKER, OutputError, RunLocked
from pipelines.run import run
from tests.test_pipeline import scripted_config
from tests.test_resume import _slow_cli, _slow_config

ROOT = Path(__file__).resolve().parents[1]


def _users_folder(folder: Path) -> dict[str, str]:
    """A folder of the user's own that happens to use a run's names."""
    files = {
        "README.md": "# my project\n",
        "manifest.json": '{"mine": true}\n',
        "tasks/todo.txt": "buy milk\n",
        "plots/figure.png": "not really a png\n",
        "_work/notes.txt": "draft\n",
        "notes.txt": "keep me\n",
    }
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return files


def _unchanged(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / name).read_text() == text for name, text in files.items())


def test_a_folder_that_is_not_a_run_is_refused_and_nothing_in_it_is_touched(
    tmp_path: Path,
) -> None:
    out = tmp_path / "mine"
    files = _users_folder(out)
    with pytest.raises(OutputError, match="not an agentmill run folder") as refused:
        run(scripted_config(out, episodes=2))
    assert "--force" in str(refused.value) and "README.md" in str(refused.value)
    assert _unchanged(out, files)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "manifest.json", "tasks", "plots", "_work", "notes.txt"]
    )


def test_the_cli_refuses_a_users_folder_with_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    files = _users_folder(out)
    result = CliRunner().invoke(app, ["run", "--out", str(out), "--episodes", "1"])
    assert result.exit_code == 2, result.output
    assert "not an agentmill run folder" in result.output
    assert _unchanged(out, files)
    assert not (out / "agentmill.log").exists()  # refused before its log was opened there


def test_force_replaces_only_the_runs_own_entries(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    _users_folder(out)
    manifest = run(scripted_config(out, episodes=2), force=True)
    assert manifest["reconcile"]["ok"]
    assert (out / "notes.txt").read_text() == "keep me\n"  # not a run's name: never touched
    assert "buy milk" not in json.dumps(sorted(p.name for p in (out / "tasks").iterdir()))
    assert json.loads((out / "manifest.json").read_text())["counts"]["tasks"] == 2
    assert (out / MARKER).is_file()


@pytest.mark.parametrize("bad", ["", "   ", "/", "//", "gs://bucket", "gs://bucket/"])
def test_empty_and_root_outputs_are_refused(bad: str) -> None:
    with pytest.raises(OutputError):
        outdir.check_path(bad)


def test_cli_refuses_an_empty_or_root_out_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "keep.txt").write_text("mine")
    for bad in ("", "/"):
        result = CliRunner().invoke(app, ["run", "--out", bad, "--episodes", "1", "--force"])
        assert result.exit_code == 2, result.output
        assert "--out" in result.output
    assert (tmp_path / "tasks" / "keep.txt").read_text() == "mine"
    assert not Path("/toolspecs").exists() and not Path("/sft").exists()


def test_an_empty_folder_and_a_marked_run_folder_are_claimed(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run(scripted_config(empty, episodes=1))
    assert (empty / MARKER).is_file() and not (empty / LOCK).exists()
    (empty / "manifest.json").write_text("{}")
    second = run(scripted_config(empty, episodes=1))  # its own folder: replaced
    assert json.loads((empty / "manifest.json").read_text())["counts"] == second["counts"]


def test_an_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("mine")
    with pytest.raises(OutputError, match="is a file"):
        run(scripted_config(target, episodes=1), force=True)
    assert target.read_text() == "mine"


def test_a_held_lock_refuses_a_second_run_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with outdir.locked(out):
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as refused:
            run(scripted_config(out, episodes=1))
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert not (out / "manifest.json").exists()
    assert not (out / LOCK).exists()  # released
    run(scripted_config(out, episodes=1))


def test_a_killed_runs_lock_is_stale_and_taken_over(tmp_path: Path) -> None:
    """A lock file whose holder died (nobody holds the flock) does not block the next run."""
    out = tmp_path / "run"
    script = (
        "import sys, time; from pathlib import Path; from pipelines import outdir\n"
        "with outdir.locked(Path(sys.argv[1])):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
        run(scripted_config(out, episodes=1))
    holder.kill()
    holder.wait(timeout=10)
    assert (out / LOCK).exists()  # a kill -9 leaves the file behind
    manifest = run(scripted_config(out, episodes=1))
    assert manifest["reconcile"]["ok"] and not (out / LOCK).exists()


def test_two_runs_into_one_folder_the_second_is_refused_and_the_first_resumes(
    tmp_path: Path,
) -> None:
    """Another config into a folder a run is using: refused, naming the holder; the first run's
    checkpoints are untouched, so after it is stopped the same command resumes it."""
    out = tmp_path / "run"
    config = _slow_config(tmp_path, 24)
    first = _slow_cli(["--config", str(config), "--out", str(out)], delay=0.3)  # a minute long
    deadline = time.monotonic() + 120
    while not (out / LOCK).exists() or not (out / LOCK).read_text().strip():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace('"episodes": 24', '"episodes": 3'))
    second = _slow_cli(["--config", str(other), "--out", str(out)])
    _, stderr = second.communicate(timeout=120)
    assert first.poll() is None, "the first run ended before the second was checked"
    assert second.returncode == 2, stderr[-2000:]
    assert f"pid {first.pid}" in stderr and "in use by another run" in stderr
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert first.returncode == 130
    rerun = _slow_cli(["--config", str(config), "--out", str(out)], delay=0.01)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["tasks"] == 24 and manifest["reconcile"]["ok"]
    assert sum(manifest["resume"]["reused"].values()) > 0  # the first run's work was kept


def test_a_lock_kept_by_a_dead_runs_child_process_is_named_as_such(tmp_path: Path) -> None:
    """An engine process forked by a run inherits its lock; if the run dies and the child
    lingers, the refusal says so instead of naming the dead pid as a live run."""
    out = tmp_path / "run"
    script = (
        "import os, sys, time; from pathlib import Path; from pipelines import outdir\n"
        "held = outdir.locked(Path(sys.argv[1])); held.__enter__()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.close(1); os.close(2); time.sleep(60); os._exit(0)\n"
        "print(child, flush=True); os._exit(0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    child = int(done.stdout.strip())
    try:
        with pytest.raises(RunLocked, match="left over from a run that is gone"):
            run(scripted_config(out, episodes=1))
    finally:
        os.kill(child, 9)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    assert run(scripted_config(out, episodes=1))["reconcile"]["ok"]
