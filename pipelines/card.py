"""The dataset card (`README.md`) written into every run folder, with its plots in `plots/`.

The card is a Hugging Face dataset card: YAML front matter that names one config per folder (so
`load_dataset(RUN_DIR, "sft")` works), then what the data is, how it was made (models per role,
config fingerprint), counts per stage, the judge's pass rate, tokens, and PNG plots. Its numbers
come from `pipelines.stats`, the same place `agentmill stats` reads them from.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipelines import storage
from pipelines.stats import pct, run_stats

DESCRIPTIONS = {
    "toolspecs": "the tool pool the run drew from",
    "agents": "composed agents: system prompt and a coherent tool set",
    "tasks": "tasks with goals, user knowledge and rubrics",
    "trajectories": "every finished episode, before filtering",
    "sft": "trajectories that passed the checks and the judge: `messages` + `tools`",
    "rl": "tasks with tools, rubric and initial world state, for RL rollouts",
    "rejected": "trajectories that failed a check or the judge, with the judgement",
    "failures": "inputs that could not be processed, with stage, error and raw output",
}
PLOTS_FOLDER = "plots"
COLOR = "#4c72b0"
REJECTED_COLOR = "#dd8452"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# plots ----------------------------------------------------------------------------------------


def _png(draw: Callable[[Axes], None], width: float = 6.0, height: float = 3.2) -> bytes:
    """One plot drawn on a fresh Agg canvas (no pyplot, so no global backend state)."""
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    draw(axes)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _counts_bar(values: list[int], xlabel: str) -> Callable[[Axes], None]:
    def draw(axes: Axes) -> None:
        top = max(values)
        xs = list(range(top + 1))
        axes.bar(xs, [values.count(x) for x in xs], color=COLOR, width=0.8)
        axes.set_xticks(xs if top <= 20 else xs[:: max(1, top // 10)])
        axes.set_xlabel(xlabel)
        axes.set_ylabel("episodes")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))

    return draw


def _barh(counts: dict[str, int], xlabel: str) -> Callable[[Axes], None]:
    def draw(axes: Axes) -> None:
        keys = list(counts)[:15][::-1]
        labels = [k if len(k) <= 40 else k[:39] + "…" for k in keys]
        axes.barh(labels, [counts[k] for k in keys], color=COLOR)
        axes.set_xlabel(xlabel)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(axis="y", labelsize=8)

    return draw


def _scores(passed: list[float], rejected: list[float], threshold: float | None) -> Any:
    def draw(axes: Axes) -> None:
        bins = [i / 10 for i in range(11)]
        axes.hist(
            [passed, rejected], bins=bins, stacked=True, color=[COLOR, REJECTED_COLOR],
            label=["passed", "rejected by the judge"],
        )
        if threshold is not None:
            axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        axes.set_xlim(0, 1)
        axes.set_xlabel("judge score")
        axes.set_ylabel("trajectories")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(frameon=False, fontsize=8, loc="upper left")

    return draw


def write_plots(out: Any, stats: dict[str, Any]) -> dict[str, str]:
    """PNG plots under `out/plots/`; returns {title: relative path} for those with data."""
    series = stats["series"]
    plans: list[tuple[str, str, Callable[[Axes], None] | None, float]] = [
        ("Turns per episode", "turns_per_episode.png",
         _counts_bar(series["turns"], "user turns") if series["turns"] else None, 3.2),
        ("Tool calls per episode", "tool_calls_per_episode.png",
         _counts_bar(series["tool_calls"], "tool calls") if series["tool_calls"] else None, 3.2),
        ("Domains", "domains.png",
         _barh(stats["domains"], "episodes") if stats["domains"] else None,
         1.2 + 0.3 * min(len(stats["domains"]), 15)),
        ("Judge scores", "judge_scores.png",
         _scores(series["scores_passed"], series["scores_rejected"], stats["judge"]["threshold"])
         if series["scores_passed"] or series["scores_rejected"] else None, 3.2),
        ("Rejection and failure reasons", "failure_reasons.png",
         _barh(stats["failure_reasons"], "count") if stats["failure_reasons"] else None,
         1.2 + 0.3 * min(len(stats["failure_reasons"]), 15)),
    ]
    made: dict[str, str] = {}
    for title, filename, draw, height in plans:
        if draw is None:
            continue
        storage.write_bytes(out / PLOTS_FOLDER / filename, _png(draw, height=height))
        made[title] = f"{PLOTS_FOLDER}/{filename}"
    return made


# the card -------------------------------------------------------------------------------------


def _front_matter(out: Any, counts: dict[str, int]) -> str:
    """Hugging Face card metadata: one config per non-empty folder, `sft` the default.

    `dataset_info` (rows and bytes per config) is there because `datasets` keys its cache for a
    folder with card configs on the card, not on the files: without it a rerun into the same
    folder could load the previous run's rows from the cache.
    """
    lines = [
        "---",
        f"pretty_name: {json.dumps(f'agentmill {out.name}')}",
        "tags: [synthetic, tool-use, agents, function-calling, agentmill]",
        "task_categories: [text-generation]",
        "configs:",
    ]
    infos = ["dataset_info:"]
    for folder in DESCRIPTIONS:
        if not counts.get(folder):
            continue
        lines += [f"- config_name: {folder}", f"  data_files: {folder}/*.parquet"]
        if folder == "sft":
            lines.append("  default: true")
        size = storage.total_size(out / folder, "*.parquet")
        infos += [
            f"- config_name: {folder}",
            f"  download_size: {size}",
            "  splits:",
            "  - name: train",
            f"    num_bytes: {size}",
            f"    num_examples: {counts[folder]}",
        ]
    return "\n".join([*lines, *(infos if len(infos) > 1 else []), "---"])


def _model_tokens(by_model: dict[str, dict[str, Any]]) -> str:
    """Per model (roles sharing a model share a row), when the manifest has it."""
    if not by_model:
        return ""
    rows = [
        [f"`{model}`", ", ".join(t.get("roles", [])), t.get("requests", 0), t.get("prompt", 0),
         t.get("completion", 0)]
        for model, t in by_model.items()
    ]
    return "\n\n" + _table(
        ["model", "roles", "requests", "prompt tokens", "completion tokens"], rows
    )


LOADABLE = ("sft", "rl", "rejected")
"""The folders the loading snippet shows, when they hold rows."""


def _loading_snippet(out: Any, counts: dict[str, int]) -> str:
    """`load_dataset` lines for the folders that hold rows only: `datasets` has no config for an
    empty folder (the front matter names non-empty ones), so a line for it would raise."""
    names = [f for f in LOADABLE if counts.get(f)] or [f for f in DESCRIPTIONS if counts.get(f)]
    if not names:
        return "This run wrote no rows, so there is nothing to load.\n\n"
    lines = [f"{f} = load_dataset('{out}', '{f}', split='train')" for f in names]
    empty = [f"`{f}/`" for f in LOADABLE if not counts.get(f)]
    note = f"{', '.join(empty)} hold no rows in this run, so they have no config.\n\n" \
        if empty else ""
    return "```python\nfrom datasets import load_dataset\n" + "\n".join(lines) + "\n```\n\n" + note


def write_card(out: Any, manifest: dict[str, Any]) -> Any:
    """Write `out/README.md` (and `out/plots/*.png`) for the run whose manifest is given."""
    out = storage.run_path(out)
    stats = run_stats(out, manifest)
    counts, judge, tokens, episodes = (
        stats["counts"], stats["judge"], stats["tokens"], stats["episodes"]
    )
    plots = write_plots(out, stats)
    token_rows = [
        [role, t.get("requests", 0), t.get("prompt", 0), t.get("completion", 0)]
        for role, t in tokens["by_role"].items()
    ]
    if token_rows:
        token_rows.append(
            ["**all**", tokens["requests"], tokens["prompt"], tokens["completion"]]
        )
    sections = [
        _front_matter(out, counts),
        f"# agentmill data set `{out.name}`",
        "Synthetic multi-turn tool-use conversations: simulated users, an agent with tools, and a "
        "model playing the tools, filtered by deterministic checks and a rubric judge. Passing "
        "episodes are in `sft/`, tasks ready for RL rollouts in `rl/`, everything rejected (with "
        "the reason) in `rejected/`, and whatever could not be processed in `failures/`.",
        f"- config fingerprint: `{stats['fingerprint']}` (agentmill {stats['agentmill_version']})"
        f"\n- made: {stats['started_at']} to {stats['finished_at']} ({stats['wall_seconds']} s)"
        f"\n- judge pass rate: {pct(judge['pass_rate'])} of {judge['judged']} judged; "
        f"{judge['rejected_by_checks']} rejected by the deterministic checks before the judge"
        f"\n- counts reconcile (tasks = sft + rejected + failures): {stats['reconcile_ok']}",
        "## Contents",
        _table(
            ["folder", "rows", "what"],
            [[f"`{k}/`", counts[k], DESCRIPTIONS.get(k, "")] for k in counts],
        ),
        "## Models per role",
        _table(["role", "model"], [[r, f"`{m}`"] for r, m in stats["models"].items()]),
        "## Judge",
        _table(
            ["statistic", "value"],
            [
                ["rejected by checks (never judged)", judge["rejected_by_checks"]],
                ["judged", judge["judged"]],
                ["passed", judge["passed"]],
                ["pass rate", pct(judge["pass_rate"])],
                ["pass threshold", judge["threshold"]],
                ["mean score (passed)", judge["mean_score_passed"]],
                ["mean score (rejected)", judge["mean_score_rejected"]],
                ["inter-judge agreement (committee; share agreeing with the verdict)",
                 judge["agreement"] if judge["with_committee"] else "n/a (one judge)"],
                [f"false-pass rate (judge passed, outcome reward 0; of {judge['reward_0']})",
                 pct(judge["false_pass_rate"])],
            ],
        ),
        "## Tokens",
        (
            _table(["role", "requests", "prompt tokens", "completion tokens"], token_rows)
            if token_rows
            else "No model requests were recorded."
        )
        + _model_tokens(tokens["by_model"])
        + f"\n\nThe `sft/` conversations hold about {tokens['sft_estimate']:,} tokens "
        "(characters / 4).",
    ]
    if episodes["count"]:
        sections += [
            "## Episodes",
            _table(
                ["statistic", "value"],
                [
                    ["episodes", episodes["count"]],
                    ["mean user turns", episodes["mean_turns"]],
                    ["mean tool calls", episodes["mean_tool_calls"]],
                    ["episodes with a tool call", episodes["with_tool_call"]],
                    ["episodes with a tool error", episodes["with_tool_error"]],
                    ["end reasons", ", ".join(f"{k} ({v})" for k, v in
                                              episodes["end_reasons"].items())],
                    ["domains", ", ".join(f"{d} ({n})" for d, n in stats["domains"].items())],
                ],
            ),
        ]
    if stats["failure_reasons"]:
        sections += [
            "## Rejections and failures",
            _table(["reason", "count"], [[k, v] for k, v in stats["failure_reasons"].items()]),
        ]
    sections.append("## Plots")
    sections.append(
        "\n\n".join(f"### {title}\n\n![{title}]({path})" for title, path in plots.items())
        if plots
        else "Nothing to plot: the run produced no episodes."
    )
    sections += [
        "## Loading",
        "Every folder is plain Parquet; `messages` is a list of OpenAI chat structs and `tools`, "
        "schemas, rubrics and world states are JSON text.\n\n"
        + _loading_snippet(out, counts)
        + f"`agentmill stats {out}` prints these numbers; `agentmill sample {out} -n 3` shows "
        f"trajectories; `agentmill export {out} --format trl|sharegpt|hermes|verl --out DIR` "
        "writes trainer-ready shards.",
    ]
    path = out / "README.md"
    storage.write_text(path, "\n\n".join(sections) + "\n")
    return path
