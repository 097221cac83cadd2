"""The run's progress display: rates from the first finished item, totals that shrink with losses
upstream, a line per stage at most every few seconds in a log, third-party noise kept off the
terminal (the real CLI in a subprocess for the last two)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from pipelines import progress
from pipelines.progress import Board, StageState
from tests.test_first_contact import agentmill, scripted


def test_rates_and_eta_count_from_the_first_finished_item() -> None:
    state = StageState("episodes", total=10)
    # 300 s of engine start-up before the first item; then 4 more in 8 s.
    state.done, state.first_at, state.first_tokens = 1, 1000.0, 50
    state.done, state.tokens, state.last_at = 5, 50 + 400, 1008.0
    per_s, tokens_s, eta = state.rates(now=1008.0)
    assert per_s == pytest.approx(0.5) and tokens_s == pytest.approx(50.0)
    assert eta == pytest.approx(10.0)  # 5 left at 0.5/s, not at 5 per 308 s
    assert "5/10 | 0.50/s, 50 tok/s, ETA 10s" in state.line(now=1008.0)
    assert StageState("judge", total=3, done=1, first_at=5.0).rates(6.0) == (None, None, None)


def test_a_loss_upstream_lowers_every_later_total() -> None:
    board = Board()
    board.stream = io.StringIO()
    board.fanout["agents"] = 2
    agents, tasks = board.stage("agents", 3), board.stage("tasks", 6)
    episodes, judge = board.stage("episodes", 6), board.stage("judge", 6)
    board.finish_item(agents, 10)
    board.finish_item(agents, 0, reason="ModelError: no usable answer")  # its 2 tasks never come
    assert (tasks.expected, episodes.expected, judge.expected) == (4, 4, 4)
    for _ in range(4):
        board.finish_item(tasks, 5)
    board.finish_item(episodes, 5)
    board.finish_item(episodes, 0, reason="EpisodeError: x")
    board.finish_item(episodes, 0, reason="EpisodeError: x")
    board.finish_item(episodes, 5)
    for _ in range(2):
        board.finish_item(judge, 1)
    # The judge counts to what reached it: 2 of 2, finished, not "2/6".
    assert judge.expected == 2 and judge.finished
    assert board.reasons()[0] == ("episodes", "EpisodeError: x", 2)
    board.close()
    lines = board.stream.getvalue().splitlines()
    assert any(re.search(r"judge +2/2 .*\| done", line) for line in lines), lines


def test_a_log_gets_a_line_per_stage_not_per_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LINE_EVERY_S", 3600.0)  # only final and closing lines
    board = Board()
    board.stream = io.StringIO()
    state = board.stage("episodes", 200)
    for _ in range(200):
        board.finish_item(state, 3)
    board.close()
    lines = board.stream.getvalue().splitlines()
    assert len(lines) == 1 and "episodes  200/200" in lines[0] and "done" in lines[0]


def test_cli_keeps_third_party_noise_in_the_log_and_says_the_engine_is_starting(
    tmp_path: Path,
) -> None:
    config = scripted(tmp_path, episodes=4, synthesizer="noisy")
    out = tmp_path / "run"
    quiet = agentmill("run", "--config", str(config), "--out", str(out), delay=0.01)
    assert quiet.returncode == 0, quiet.stderr
    assert "starting the engine for synthesizer (scripted:noisy" in quiet.stderr
    assert "engine for synthesizer ready in 0 s" in quiet.stderr
    assert "FutureWarning" not in quiet.stderr and "NUMA" not in quiet.stderr
    log = (out / "agentmill.log").read_text()
    assert "noisy FutureWarning" in log and "W NUMA: noisy line on fd 2" in log
    assert "noisy library logger" in log and "noisy library logger" not in quiet.stderr
    # A log (not a terminal): a few summary lines per stage, no line per finished item...
    summaries = re.findall(r"\[ *(\d+)s\] episodes +\d+/4", quiet.stderr)
    span = int(summaries[-1]) - int(summaries[0])
    assert 1 <= len(summaries) <= span / progress.LINE_EVERY_S + 2, quiet.stderr
    assert "task_" not in quiet.stderr  # no item ids: no line per item
    assert re.search(r"episodes +4/4 .*\| done", quiet.stderr)
    # ...which the log file keeps at debug level.
    assert len(re.findall(r"DEBUG agentmill.progress: episodes task_\w+: ", log)) == 4

    loud = agentmill("run", "--config", str(config), "--out", str(tmp_path / "loud"),
                     "--verbose", delay=0.01)
    assert loud.returncode == 0, loud.stderr
    assert "noisy FutureWarning" in loud.stderr and "W NUMA: noisy line on fd 2" in loud.stderr
    assert re.search(r"DEBUG agentmill.progress: episodes task_\w+: ", loud.stderr)
