"""The run manifest: config, fingerprint, counts per stage, tokens per role and per model, timings.

Per role and per model: prompt and completion tokens, requests, transport retries, and seconds
spent waiting on the model (summed over requests, which overlap, so it can exceed the wall time).

Counts are read back from the Parquet that landed, not from what the pipeline meant to write, so
the manifest is the truth about the folder it sits in; reconciliation is checked here.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pipelines.config import ROLES, RunConfig
from pipelines.parquet_io import OUTPUT_FOLDERS, count_rows, read_column
from pipelines.shared import TOKEN_FIELDS, pipeline_metrics
from simulators.llm.engines import engines

EPISODE_STAGES = ("episodes", "judge")


def _column(folder: Path, name: str) -> list[Any]:
    """Through Beam-aware readers, so a `gs://` run folder works as a local one does."""
    return read_column(folder, name)


def tokens_by_model(
    tokens: dict[str, dict[str, Any]], models: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Role totals summed per model (roles that share a model share its row)."""
    out: dict[str, dict[str, Any]] = {}
    for role, counts in sorted(tokens.items()):
        name = models.get(role, role)
        entry = out.setdefault(name, {**dict.fromkeys(TOKEN_FIELDS, 0), "roles": []})
        for key in TOKEN_FIELDS:
            entry[key] += counts.get(key, 0)
        entry["wait_s"] = round(entry["wait_s"], 3)
        entry["roles"].append(role)
    return out


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def build_manifest(
    config: RunConfig,
    out: Path,
    result: Any,
    started_at: float,
    finished_at: float,
    reused: dict[str, int] | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """The manifest of the run folder `out`; `reused` counts, per stage, the finished work the
    run took from its checkpoint (`checkpoint`, relative to `out`) instead of recomputing it
    (tokens count only new work)."""
    counts = {folder: count_rows(out / folder) for folder in OUTPUT_FOLDERS}
    failure_stages = Counter(_column(out / "failures", "stage"))
    failure_types = Counter(
        f"{s}:{t}"
        for s, t in zip(
            _column(out / "failures", "stage"), _column(out / "failures", "error_type"),
            strict=True,
        )
    )
    tokens, busy = pipeline_metrics(result)
    models = {role: getattr(config.models, role).display_name() for role in ROLES}
    planned_agents = math.ceil(config.episodes / config.tasks_per_agent)
    episode_failures = sum(failure_stages.get(s, 0) for s in EPISODE_STAGES)
    by_checks = sum(1 for checks in _column(out / "rejected", "failed_checks") if checks)
    judged = counts["sft"] + counts["rejected"] - by_checks
    reconcile = {
        "tasks": counts["tasks"],
        "sft": counts["sft"],
        "rejected": counts["rejected"],
        "episode_and_judge_failures": episode_failures,
        "ok": counts["tasks"] == counts["sft"] + counts["rejected"] + episode_failures,
    }
    try:
        agentmill_version = version("agentmill")
    except PackageNotFoundError:
        agentmill_version = "unknown"
    return {
        "agentmill_version": agentmill_version,
        "fingerprint": config.fingerprint(),
        "config": config.public_dump(),
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "counts": counts,
        "planned": {"agents": planned_agents, "tasks": config.episodes},
        "failures_by_stage": dict(sorted(failure_stages.items())),
        "failures_by_type": dict(sorted(failure_types.items())),
        "reconcile": reconcile,
        "judge": {
            "judged": judged,
            "rejected_by_checks": by_checks,
            "passed": counts["sft"],
            "pass_rate": round(counts["sft"] / judged, 4) if judged else None,
        },
        "end_reasons": dict(sorted(Counter(_column(out / "trajectories", "end_reason")).items())),
        "models": models,
        "engines": [engine.summary() for engine in engines(config.models.by_role())],
        "tokens": dict(sorted(tokens.items())),
        "tokens_by_model": tokens_by_model(tokens, models),
        "resume": {
            "checkpoint": checkpoint,
            "reused": dict(reused or {}),
        },
        "timings": {
            "wall_seconds": round(finished_at - started_at, 1),
            "stage_busy_seconds": {k: round(v, 1) for k, v in sorted(busy.items())},
        },
    }
