"""The dataset card (`README.md`) written into every run folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.parquet_io import read_rows

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


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _episode_stats(out: Path) -> list[list[Any]]:
    try:
        rows = read_rows(out / "trajectories")
    except FileNotFoundError:
        return []
    if not rows:
        return []
    calls = [sum(len(m["tool_calls"] or []) for m in r["messages"]) for r in rows]
    turns = [r["turns"] for r in rows]
    domains = Counter(r["domain"] for r in rows)
    return [
        ["episodes", len(rows)],
        ["mean user turns", round(sum(turns) / len(turns), 2)],
        ["mean tool calls", round(sum(calls) / len(calls), 2)],
        ["episodes with a tool call", sum(1 for c in calls if c)],
        ["domains", ", ".join(f"{d} ({n})" for d, n in domains.most_common())],
    ]


def write_card(out: Path, manifest: dict[str, Any]) -> Path:
    counts = manifest["counts"]
    judge = manifest["judge"]
    pass_rate = "n/a" if judge["pass_rate"] is None else f"{judge['pass_rate']:.0%}"
    tokens = manifest["tokens"]
    token_rows = [
        [role, t.get("requests", 0), t.get("prompt", 0), t.get("completion", 0)]
        for role, t in tokens.items()
    ]
    reconcile = manifest["reconcile"]
    sections = [
        f"# agentmill data set `{out.name}`",
        "Synthetic multi-turn tool-use conversations: simulated users, an agent with tools, and a "
        "model playing the tools, filtered by deterministic checks and a rubric judge.",
        f"- config fingerprint: `{manifest['fingerprint']}`\n"
        f"- made: {manifest['started_at']} to {manifest['finished_at']} "
        f"({manifest['timings']['wall_seconds']} s)\n"
        f"- judge pass rate: {pass_rate} of {judge['judged']} judged\n"
        f"- counts reconcile (tasks = sft + rejected + failures): {reconcile['ok']}",
        "## Contents",
        _table(
            ["folder", "rows", "what"],
            [[f"`{k}/`", counts[k], DESCRIPTIONS[k]] for k in counts],
        ),
        "## Models per role",
        _table(["role", "model"], [[r, f"`{m}`"] for r, m in manifest["models"].items()]),
        "## Tokens",
        _table(["role", "requests", "prompt tokens", "completion tokens"], token_rows)
        if token_rows
        else "No model requests were recorded.",
    ]
    stats = _episode_stats(out)
    if stats:
        sections += ["## Episodes", _table(["statistic", "value"], stats)]
    if manifest["failures_by_type"]:
        sections += [
            "## Failures",
            _table(
                ["stage:error", "count"],
                [[k, v] for k, v in manifest["failures_by_type"].items()],
            ),
        ]
    sections += [
        "## Loading",
        "Every folder is plain Parquet; `messages` is a list of OpenAI chat structs and `tools`, "
        "schemas, rubrics and world states are JSON text.\n\n"
        "```python\nimport pyarrow.dataset as ds\n"
        f"table = ds.dataset('{out}/sft', format='parquet').to_table()\n```\n\n"
        f"`agentmill sample {out}/sft -n 3` shows trajectories in the terminal.",
    ]
    path = out / "README.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path
