"""The coding domain: every task's hidden tests fail on its initial files and pass on its
reference solution, in the sandbox; an episode that fixes the code earns the reward."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from filters.reward import score_trajectory
from simulators.episode import EpisodeConfig
from simulators.workspace import Workspace
from simulators.workspace_tools import run_hidden_tests
from tests.helpers import agent_calls, agent_reply, play_domain_task, role_model
from toolspecs.domain import load_domain

CODING = Path(__file__).resolve().parents[1] / "data" / "domains" / "coding"


def solution_files(task_index: int) -> dict[str, str]:
    entry = json.loads((CODING / "tasks.json").read_text())[task_index]
    folder = CODING / entry["workspace"] / "solution"
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*.py")}


def test_the_domain_loads_twenty_tasks_with_files_and_hidden_tests() -> None:
    domain = load_domain(CODING)
    assert domain.failures == []
    assert len(domain.tasks) >= 20
    names = {tool.name for tool in domain.tools}
    assert {"read_file", "write_file", "run_tests", "run_python", "get_issue"} <= names
    for task in domain.tasks:
        assert task.workspace is not None and task.workspace.hidden_tests
        assert any(path.startswith("tests/") for path in task.workspace.files)
        # The hidden tests never reach the agent's files.
        assert not set(task.workspace.hidden_tests) & set(task.workspace.files)


def test_hidden_tests_fail_on_the_initial_files_and_pass_on_the_solution() -> None:
    domain = load_domain(CODING)

    async def score(files: dict[str, str], hidden: dict[str, str]) -> tuple[int, int]:
        with Workspace(files) as workspace:
            result = await run_hidden_tests(workspace, hidden)
        return result["passed"], result["total"]

    async def all_tasks() -> list[tuple[tuple[int, int], tuple[int, int]]]:
        jobs = []
        for index, task in enumerate(domain.tasks):
            assert task.workspace is not None
            solved = {**task.workspace.files, **solution_files(index)}
            jobs.append(asyncio.gather(
                score(task.workspace.files, task.workspace.hidden_tests),
                score(solved, task.workspace.hidden_tests),
            ))
        return await asyncio.gather(*jobs)

    for index, (before, after) in enumerate(asyncio.run(all_tasks())):
        name = json.loads((CODING / "tasks.json").read_text())[index]["workspace"]
        assert before[0] < before[1], f"{name}: the initial files already pass {before}"
        assert after[0] == after[1] > 0, f"{name}: the solution does not pass {after}"


def play(task_index: int, agent_turns: list[str]):
    return play_domain_task(
        CODING, agent_turns, task_index=task_index, persona="dev", seed=7,
        asks="Please fix the failing ticket in my project.", thanks="Thanks!",
        config=EpisodeConfig(failure_rate=0.0, max_tool_rounds=4),
    )


def test_an_agent_that_fixes_the_code_earns_the_hidden_test_reward() -> None:
    (path, fixed), = solution_files(0).items()  # fizzbuzz
    trajectory, task = play(0, [
        agent_calls(("read_file", {"path": path})),
        agent_calls(("write_file", {"path": path, "content": fixed})),
        agent_calls(("run_tests", {})),
        agent_reply("Fixed: multiples of 15 are checked first; the tests pass.", final=True),
    ])
    answers = [json.loads(m.content or "{}") for m in trajectory.messages if m.role == "tool"]
    assert "if n % 3 == 0" in answers[0]["content"]
    assert answers[2]["passed"] == 1 and answers[2]["failed"] == 0
    final = trajectory.final_state["workspace"]
    assert final["files"][path]["content"] == fixed
    assert final["hidden_tests"]["passed"] == final["hidden_tests"]["total"] == 4
    reward = score_trajectory(trajectory, task)
    assert reward.reward == 1.0, reward.reasons


def test_an_agent_that_only_talks_gets_the_share_of_hidden_tests_the_bug_passes() -> None:
    trajectory, task = play(0, [
        agent_calls(("get_issue", {"issue_id": "ISSUE-101"})),
        agent_reply("I looked at the ticket; it should be fine now.", final=True),
    ])
    issue = json.loads(trajectory.messages[3].content or "{}")
    assert trajectory.messages[3].name == "get_issue" and "error" not in issue  # simulated
    reward = score_trajectory(trajectory, task)
    assert reward.reward is not None and 0 < reward.reward < 1  # 3 of 4 hidden tests pass
    assert "test_fizzbuzz" in reward.reasons[0]


def test_the_mill_runs_the_coding_and_office_domains_into_sft_and_rl_rows(tmp_path: Path) -> None:
    from pipelines.parquet_io import read_rows
    from pipelines.run import run
    from tests.test_pipeline import scripted_config

    for name, folder in (("coding", CODING), ("office", CODING.parent / "office")):
        out = tmp_path / name
        manifest = run(scripted_config(out, episodes=3, domain=str(folder)))
        assert manifest["reconcile"]["ok"] and manifest["counts"]["rl"] == 3
        for row in read_rows(out / "rl"):
            workspace = json.loads(row["workspace"])
            assert workspace["files"] and (workspace["hidden_tests"] or name == "office")
        trajectories = read_rows(out / "trajectories")
        assert trajectories, manifest["counts"]
        for row in trajectories:
            final = json.loads(row["final_state"])["workspace"]
            assert "reports/q3_sales.csv" in final["files"] or final["hidden_tests"]["total"] > 0
        judged = read_rows(out / "sft") + read_rows(out / "rejected")
        assert judged and all(r["reward"] is None or 0 <= r["reward"] <= 1 for r in judged)


def test_an_rl_row_with_a_workspace_plays_in_the_environment_with_its_reward() -> None:
    from filters.reward import episode_scorer
    from pipelines.stages import rl_task
    from simulators.environment import Environment

    domain = load_domain(CODING)
    row = rl_task((domain.tasks[0], domain.agent))
    assert row.workspace is not None and row.workspace.hidden_tests
    (path, fixed), = solution_files(0).items()
    model = role_model({"user": lambda r: {"message": "Done, thanks.", "done": True}
                        if "done" in r.schema["properties"] else {"message": "Fix ISSUE-101."}})

    async def play() -> tuple[float | None, dict]:
        env = Environment.from_rl(row, model, model, EpisodeConfig(failure_rate=0.0),
                                  scorer=episode_scorer())
        await env.reset(5)
        call = {"id": "c1", "type": "function",
                "function": {"name": "write_file", "arguments": {"path": path, "content": fixed}}}
        step = await env.step({"role": "assistant", "tool_calls": [call]})
        assert json.loads(step.messages[0].content or "{}")["path"] == path
        end = await env.step({"role": "assistant", "content": "Fixed it."}, final=True)
        assert end.done and env.trajectory is not None
        return end.reward_parts.get("outcome"), env.trajectory.final_state["workspace"]

    outcome, final = asyncio.run(play())
    assert outcome == 1.0 and final["hidden_tests"]["passed"] == 4


NO_BWRAP = "bubblewrap (bwrap) is not installed: run ./install.sh or apt-get install bubblewrap"


def test_a_machine_without_a_sandbox_stops_every_command_at_start(
    tmp_path: Path, monkeypatch
) -> None:
    """run --domain, rollout and serve-env on tasks with files: exit 2 at start, naming why,
    with nothing written; never a failure per episode, never unconfined code."""
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.run import run
    from simulators import sandbox
    from tests.test_pipeline import scripted_config

    coding_run = tmp_path / "coding"
    run(scripted_config(coding_run, episodes=2, domain=str(CODING)))  # made while bwrap works
    retail_run = tmp_path / "retail"
    run(scripted_config(retail_run, episodes=1, domain=str(CODING.parent / "retail")))
    monkeypatch.setattr(sandbox, "_probe", lambda: NO_BWRAP)
    cli = CliRunner()

    def said(result) -> str:
        return " ".join(result.output.split())

    started = cli.invoke(app, ["run", "--domain", str(CODING), "--out", str(tmp_path / "new"),
                               "--backend", "scripted", "--model", "s"])
    assert started.exit_code == 2, started.output
    assert "22 of 22 task(s) bring files and run code" in said(started)
    assert "apt-get install bubblewrap" in said(started)
    assert "nothing was written" in said(started)
    assert not (tmp_path / "new").exists()

    rolled = cli.invoke(app, ["rollout", str(coding_run), "--out", str(tmp_path / "rollouts"),
                              "--backend", "scripted", "--model", "s"])
    assert rolled.exit_code == 2, rolled.output
    assert "2 of 2 task(s) bring files" in said(rolled) and "bubblewrap" in said(rolled)
    assert not (tmp_path / "rollouts").exists()

    served = cli.invoke(app, ["serve-env", str(coding_run), "--port", "1"])
    assert served.exit_code == 2, served.output
    assert "sandbox unavailable" in said(served) and "serving" not in said(served)

    from pipelines import verl_env
    from simulators.sandbox import SandboxUnavailable

    # verl's workers open the run when the first rollout starts: the same error there.
    with pytest.raises(SandboxUnavailable, match=r"2 of 2 task\(s\) bring files.*bubblewrap"):
        verl_env._environments(str(coding_run))

    # Tasks without files need no sandbox: they still play on such a machine.
    fine = cli.invoke(app, ["rollout", str(retail_run), "--out", str(tmp_path / "retail_out"),
                            "--backend", "scripted", "--model", "s"])
    assert fine.exit_code == 0, fine.output
