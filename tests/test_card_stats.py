"""The dataset card (README.md + plots), `agentmill stats` and `agentmill sample`'s filters."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import load_dataset
from typer.testing import CliRunner

from pipelines.card import write_card
from pipelines.cli import app
from pipelines.parquet_io import read_rows
from pipelines.stats import pct, run_stats
from schemas import arrow
from schemas.records import FunctionCall, Judgement, Message, ToolCall, Trajectory

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def card(run: Path) -> tuple[dict[str, Any], str]:
    text = (run / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


# the card -------------------------------------------------------------------------------------


def test_card_says_what_is_inside_and_how_it_was_made(scripted_run: Path) -> None:
    manifest = json.loads((scripted_run / "manifest.json").read_text())
    meta, body = card(scripted_run)
    assert body.lstrip().startswith(f"# agentmill data set `{scripted_run.name}`")
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["sft"]["data_files"] == "sft/*.parquet" and configs["sft"]["default"]
    assert "failures" not in configs  # empty folders get no config
    assert manifest["fingerprint"] in body
    for role, model in manifest["models"].items():
        assert re.search(rf"\| {role} \| `{re.escape(model)}` \|", body)
    for folder, count in manifest["counts"].items():
        assert f"| `{folder}/` | {count} |" in body
    assert f"judge pass rate: {pct(manifest['judge']['pass_rate'])}" in body
    prompt_total = sum(t["prompt"] for t in manifest["tokens"].values())
    assert "| **all** | " in body and f" {prompt_total} |" in body
    assert "## Episodes" in body and "## Rejections and failures" in body
    assert "| model | roles | requests |" in body


def test_card_plots_are_pngs_it_links(scripted_run: Path) -> None:
    _, body = card(scripted_run)
    linked = re.findall(r"!\[[^\]]+\]\((plots/[^)]+\.png)\)", body)
    assert len(linked) == 5
    for name in ("turns_per_episode", "tool_calls_per_episode", "domains", "judge_scores",
                 "failure_reasons"):
        assert f"plots/{name}.png" in linked
    from PIL import Image

    for relative in linked:
        path = scripted_run / relative
        assert path.read_bytes().startswith(PNG)
        with Image.open(path) as image:
            assert image.size[0] >= 300 and image.size[1] >= 100


def test_card_configs_load_with_datasets(scripted_run: Path) -> None:
    manifest = json.loads((scripted_run / "manifest.json").read_text())
    sft = load_dataset(str(scripted_run), "sft", split="train")
    assert len(sft) == manifest["counts"]["sft"]
    rejected = load_dataset(str(scripted_run), "rejected", split="train")
    assert len(rejected) == manifest["counts"]["rejected"]
    assert "failed_checks" in rejected.column_names


def test_card_of_an_empty_run_has_no_plots(scripted_run: Path, tmp_path: Path) -> None:
    manifest = json.loads((scripted_run / "manifest.json").read_text())
    manifest["counts"] = {k: 0 for k in manifest["counts"]}
    manifest["tokens"] = {}
    manifest["judge"] = {"judged": 0, "passed": 0, "pass_rate": None}
    empty = tmp_path / "empty"
    (empty / "sft").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([], schema=arrow.SFT_SCHEMA), empty / "sft" / "p.parquet")
    write_card(empty, manifest)
    meta, body = card(empty)
    assert "Nothing to plot" in body and "No model requests" in body
    assert "judge pass rate: n/a" in body and "configs" in meta
    assert not (empty / "plots").exists()


# stats ----------------------------------------------------------------------------------------


def test_stats_prints_the_numbers_of_the_card(scripted_run: Path) -> None:
    numbers = run_stats(scripted_run)
    _, body = card(scripted_run)
    result = runner.invoke(app, ["stats", str(scripted_run)])
    assert result.exit_code == 0, result.output
    table = result.output
    assert numbers["fingerprint"] in table and numbers["fingerprint"] in body
    assert pct(numbers["judge"]["pass_rate"]) in table
    for folder, count in numbers["counts"].items():
        assert re.search(rf"│ {folder} +│ +{count} │", table), folder
    assert str(numbers["tokens"]["prompt"]) in table and str(numbers["tokens"]["prompt"]) in body
    assert str(numbers["episodes"]["mean_tool_calls"]) in table
    assert str(numbers["episodes"]["mean_tool_calls"]) in body

    as_json = runner.invoke(app, ["stats", str(scripted_run), "--json"])
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.output)
    assert parsed["counts"] == numbers["counts"] and parsed["judge"] == numbers["judge"]
    # The judge's numbers agree with the rows on disk.
    sft_rows, rejected_rows = (read_rows(scripted_run / f) for f in ("sft", "rejected"))
    assert parsed["judge"]["passed"] == len(sft_rows)
    by_checks = [r for r in rejected_rows if r["failed_checks"]]
    assert parsed["judge"]["judged"] == len(sft_rows) + len(rejected_rows) - len(by_checks)
    assert parsed["judge"]["rejected_by_checks"] == len(by_checks)
    assert sum(parsed["failure_reasons"].values()) >= len(rejected_rows)


def test_stats_needs_a_run_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["stats", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json" in result.output


# sample ---------------------------------------------------------------------------------------


def shown_ids(output: str) -> set[str]:
    return set(re.findall(r"traj_[0-9a-f]{16}", output))


def test_sample_filters_by_verdict_domain_and_score(scripted_run: Path) -> None:
    sft = read_rows(scripted_run / "sft")
    rejected = read_rows(scripted_run / "rejected")
    everything = sft + rejected

    passed = runner.invoke(app, ["sample", str(scripted_run), "--passed", "-n", "100"])
    assert passed.exit_code == 0, passed.output
    assert shown_ids(passed.output) == {r["id"] for r in sft}

    failed = runner.invoke(app, ["sample", str(scripted_run), "--rejected", "-n", "100"])
    assert shown_ids(failed.output) == {r["id"] for r in rejected}
    assert "rejected:" in failed.output

    domain = rejected[0]["domain"]
    by_domain = runner.invoke(app, ["sample", str(scripted_run), "--domain", domain, "-n", "100"])
    assert shown_ids(by_domain.output) == {r["id"] for r in everything if r["domain"] == domain}

    good = runner.invoke(app, ["sample", str(scripted_run), "--min-score", "0.75", "-n", "100"])
    # Rows a check rejected have no judge score, and --min-score leaves them out.
    expected = {r["id"] for r in everything if (r["judge_score"] or 0.0) >= 0.75}
    assert expected and shown_ids(good.output) == expected
    assert f"of {len(expected)} rows matching --min-score 0.75" in good.output

    none = runner.invoke(app, ["sample", str(scripted_run), "--domain", "atlantis"])
    assert none.exit_code == 1
    assert f"no rows match --domain atlantis (of {len(everything)} rows)" in " ".join(
        none.output.split()
    )


def test_sample_with_a_seed_is_repeatable(scripted_run: Path) -> None:
    first = runner.invoke(app, ["sample", str(scripted_run), "-n", "3", "--seed", "7"])
    second = runner.invoke(app, ["sample", str(scripted_run), "-n", "3", "--seed", "7"])
    assert first.exit_code == 0 and first.output == second.output
    assert len(shown_ids(first.output)) == 3


def trajectory(domain: str, tool_answer: str, user: str) -> Trajectory:
    call = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments="{}"))
    return Trajectory(
        task_id=f"task_{user}", agent_id="agent_1", persona_id="persona_1", domain=domain,
        messages=[
            Message(role="system", content="You are a weather assistant."),
            Message(role="user", content=user),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id="call_1", name="get_weather", content=tool_answer),
            Message(role="assistant", content="Done."),
        ],
        tools=[], end_reason="agent_final", turns=1,
    )


def write_run(folder: Path, sft: list[Trajectory], rejected: list[Trajectory]) -> None:
    (folder / "sft").mkdir(parents=True)
    (folder / "rejected").mkdir()
    sft_rows = [arrow.sft_row(t, Judgement(trajectory_id=t.id, passed=True, score=0.8))
                for t in sft]
    pq.write_table(pa.Table.from_pylist(sft_rows, schema=arrow.SFT_SCHEMA),
                   folder / "sft" / "part-00000-of-00001.parquet")
    from schemas.records import JudgedTrajectory

    rejected_rows = [
        arrow.rejected_row(JudgedTrajectory(
            trajectory=t,
            judgement=Judgement(trajectory_id=t.id, passed=False, failed_checks=["tool_error"]),
        ))
        for t in rejected
    ]
    pq.write_table(pa.Table.from_pylist(rejected_rows, schema=arrow.REJECTED_SCHEMA),
                   folder / "rejected" / "part-00000-of-00001.parquet")


def test_sample_has_error_finds_tool_errors(tmp_path: Path) -> None:
    error = json.dumps({"error": {"code": 400, "type": "invalid_arguments", "message": "city"}})
    broken = trajectory("weather", error, "Weather in Oslo?")
    fine = trajectory("weather", '{"t": 3}', "Weather in Rome?")
    write_run(tmp_path / "run", sft=[fine], rejected=[broken])
    result = runner.invoke(app, ["sample", str(tmp_path / "run"), "--has-error", "-n", "5"])
    assert result.exit_code == 0, result.output
    assert shown_ids(result.output) == {broken.id}
    assert "check: tool_error" in result.output
    clean = runner.invoke(app, ["sample", str(tmp_path / "run"), "--passed", "--has-error"])
    flat = " ".join(clean.output.split())
    assert clean.exit_code == 1 and "no rows match --passed --has-error" in flat
    assert "1 rejected trajectory is in" in flat


def test_sample_of_an_empty_sft_points_at_rejected(tmp_path: Path) -> None:
    rejected = [trajectory("weather", '{"t": 3}', f"question {i}") for i in range(2)]
    write_run(tmp_path / "run", sft=[], rejected=rejected)
    for args in (["sample", str(tmp_path / "run" / "sft")],
                 ["sample", str(tmp_path / "run"), "--passed"]):
        result = runner.invoke(app, args)
        flat = " ".join(result.output.split())
        assert result.exit_code == 1, result.output
        assert "no rows" in flat and "2 rejected trajectories are in" in flat
    both = runner.invoke(app, ["sample", str(tmp_path / "run"), "-n", "5"])
    assert both.exit_code == 0 and shown_ids(both.output) == {t.id for t in rejected}


@pytest.mark.parametrize("flag", ["--passed", "--rejected"])
def test_sample_verdict_filters_on_a_plain_folder(scripted_run: Path, flag: str) -> None:
    """On sft/ itself, --passed keeps everything and --rejected nothing (and says so)."""
    result = runner.invoke(app, ["sample", str(scripted_run / "sft"), flag, "-n", "100"])
    if flag == "--passed":
        assert shown_ids(result.output) == {r["id"] for r in read_rows(scripted_run / "sft")}
    else:
        assert result.exit_code == 1
        assert "no rows match --rejected" in " ".join(result.output.split())


def test_rejection_reasons_group_by_check_and_plot_cleanly(tmp_path: Path) -> None:
    import warnings

    from pipelines.card import write_plots
    from pipelines.stats import rejection_reasons

    check = "repeated_call: 'search' called 7 times with {\"city\": \"New York\", \"max\": 1}"
    assert rejection_reasons([check]) == ["check: repeated_call"]
    assert rejection_reasons([check], detail=True) == [f"check: {check}"]
    assert rejection_reasons([]) == ["judge: score below threshold"]
    stats = {
        "series": {"turns": [1], "tool_calls": [7], "scores_passed": [], "scores_rejected": [0.0]},
        "domains": {"real_estate_and_property_management_services": 1},
        "judge": {"threshold": 0.5},
        "failure_reasons": {f"check: {'x' * 90}": 1, "judge: score below threshold": 1},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "Tight layout not applied"
        made = write_plots(tmp_path, stats)
    assert len(made) == 5
    assert all((tmp_path / path).read_bytes().startswith(PNG) for path in made.values())


def test_check_rejections_are_not_judge_verdicts(tmp_path: Path) -> None:
    """A trajectory the checks rejected has no judge score and is not counted as judged."""
    from schemas.records import JudgedTrajectory

    checked = trajectory("weather", '{"t": 3}', "by checks")
    judged = trajectory("weather", '{"t": 4}', "by the judge")
    write_run(tmp_path / "run", sft=[trajectory("weather", '{"t": 5}', "passed")],
              rejected=[checked])
    extra = arrow.rejected_row(JudgedTrajectory(
        trajectory=judged, judgement=Judgement(trajectory_id=judged.id, passed=False, score=0.25),
    ))
    pq.write_table(pa.Table.from_pylist([extra], schema=arrow.REJECTED_SCHEMA),
                   tmp_path / "run" / "rejected" / "part-00001-of-00002.parquet")
    rows = {r["id"]: r for r in read_rows(tmp_path / "run" / "rejected")}
    assert rows[checked.id]["judge_score"] is None and rows[judged.id]["judge_score"] == 0.25
    numbers = run_stats(tmp_path / "run", manifest={})
    assert numbers["judge"]["judged"] == 2 and numbers["judge"]["rejected_by_checks"] == 1
    assert numbers["judge"]["pass_rate"] == 0.5
    assert numbers["series"]["scores_rejected"] == [0.25]  # no 0.0 plotted for the checks' one
    assert numbers["failure_reasons"] == {"check: tool_error": 1, "judge: score below threshold": 1}


def test_card_snippet_loads_only_folders_with_rows(scripted_run: Path, tmp_path: Path) -> None:
    """A run whose sft/ is empty: every `load_dataset` line of its card runs (none names sft)."""
    import shutil

    manifest = json.loads((scripted_run / "manifest.json").read_text())
    run = tmp_path / "no_sft"
    shutil.copytree(scripted_run, run)
    shutil.rmtree(run / "sft")
    (run / "sft").mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=arrow.SFT_SCHEMA), run / "sft" / "p.parquet")
    manifest["counts"]["sft"] = 0
    write_card(run, manifest)
    _, body = card(run)
    snippet = re.search(r"```python\n(.*?)```", body, re.S).group(1)  # type: ignore[union-attr]
    assert "'sft'" not in snippet and "'rejected'" in snippet and "'rl'" in snippet
    assert "`sft/` hold no rows" in body
    scope: dict[str, Any] = {}
    exec(snippet, scope)  # the lines a user would paste
    assert len(scope["rejected"]) == manifest["counts"]["rejected"]
    assert len(scope["rl"]) == manifest["counts"]["rl"]


def test_stats_read_a_batch_at_a_time_and_agree_with_the_rows(
    scripted_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stats hold a few numbers per trajectory, read in small batches (a large run's messages
    never whole in memory), and those numbers are the ones the rows on disk give."""
    import pipelines.stats as stats_module
    from pipelines.parquet_io import iter_rows
    from pipelines.stats import approx_tokens, has_tool_error, message_text, tool_calls

    tiny = lambda path, columns: iter_rows(path, columns, batch_rows=1)  # noqa: E731
    monkeypatch.setattr(stats_module, "iter_rows", tiny)
    numbers = run_stats(scripted_run)
    trajectories = read_rows(scripted_run / "trajectories")
    sft = read_rows(scripted_run / "sft")
    assert numbers["series"]["tool_calls"] == [tool_calls(r["messages"]) for r in trajectories]
    assert numbers["series"]["turns"] == [r["turns"] for r in trajectories]
    assert numbers["episodes"]["with_tool_error"] == sum(
        1 for r in trajectories if has_tool_error(r["messages"]))
    assert numbers["tokens"]["sft_estimate"] == sum(
        approx_tokens(message_text(r["messages"]) + (r["tools"] or "")) for r in sft)
    # A column a file lacks (older runs) reads as None, row by row.
    rows = list(iter_rows(scripted_run / "trajectories", ["id", "not_a_column"], batch_rows=2))
    assert [r["id"] for r in rows] == [r["id"] for r in trajectories]
    assert all(r["not_a_column"] is None for r in rows)
