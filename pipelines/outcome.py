"""Whether a finished run did what it was asked, and why not: the exit code and the end summary.

A run folder full of `Failure` rows is not a success, even though every stage "finished": the exit
code is 0 only when episodes were played and no stage lost more than `control.max_failure_rate` of
what reached it. The top failure reasons are printed at the end, not only stored in `failures/`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.parquet_io import read_column

STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "agents": ("agents",),
    "tasks": ("tasks",),
    "episodes": ("trajectories",),
    "judge": ("sft", "rejected"),
}
"""Each model-driven stage and the folders its successful outputs land in."""
TOP_REASONS = 5


@dataclass
class Outcome:
    exit_code: int
    problems: list[str] = field(default_factory=list)
    """Why the exit code is not 0 (one line per stage that failed too much)."""
    reasons: list[str] = field(default_factory=list)
    """The commonest failure reasons, with counts, most frequent first."""


def stage_totals(manifest: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(succeeded, failed) per model-driven stage, from what landed on disk."""
    counts, failed = manifest["counts"], manifest.get("failures_by_stage", {})
    return {
        stage: (sum(counts.get(f, 0) for f in folders), failed.get(stage, 0))
        for stage, folders in STAGE_OUTPUTS.items()
    }


def judge_outcome(manifest: dict[str, Any], out: str | Path, dry_run: bool = False) -> Outcome:
    """The run's exit code (0 or 1), what made it non-zero, and its top failure reasons; a dry
    run (which plays nothing) is judged on failures only."""
    brake = manifest.get("config", {}).get("control", {}).get("max_failure_rate", 0.5)
    problems = []
    for stage, (ok, failed) in stage_totals(manifest).items():
        reached = ok + failed
        if reached and failed > brake * reached:
            share = "every one" if ok == 0 else f"{failed / reached:.0%}, above {brake:.0%}"
            problems.append(f"{stage}: {failed} of {reached} failed ({share})")
    if manifest["counts"].get("trajectories", 0) == 0 and not problems and not dry_run:
        problems.append("no episode was played: nothing reached the episode stage")
    return Outcome(1 if problems else 0, problems, top_reasons(out) if problems or
                   manifest["counts"].get("failures") else [])


def top_reasons(out: str | Path, limit: int = TOP_REASONS) -> list[str]:
    """The commonest (stage, error type) pairs among the run's failures, each with one example
    message (the first line, shortened)."""
    folder = storage.run_path(out) / "failures"
    try:
        stages = read_column(folder, "stage")
        types = read_column(folder, "error_type")
        errors = read_column(folder, "error")
    except (FileNotFoundError, OSError, KeyError):
        return []
    counted = Counter(zip(stages, types, strict=True))
    example: dict[tuple[str, str], str] = {}
    for key, error in zip(zip(stages, types, strict=True), errors, strict=True):
        example.setdefault(key, (str(error or "").splitlines() or [""])[0])
    lines = []
    for (stage, kind), n in counted.most_common(limit):
        text = example[(stage, kind)]
        text = text if len(text) <= 200 else text[:197] + "..."
        lines.append(f"{n} × {stage}: {kind}: {text}")
    if len(counted) > limit:
        rest = sum(n for _, n in counted.most_common()[limit:])
        lines.append(f"{rest} more of {len(counted) - limit} other kind(s)")
    return lines
