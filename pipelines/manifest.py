"""The run manifest: config, fingerprint, counts per stage, tokens per role, timings.

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

import pyarrow.parquet as pq

from pipelines.config import ROLES, RunConfig
from pipelines.parquet_io import OUTPUT_FOLDERS, count_rows, parquet_files

EPISODE_STAGES = ("episodes", "judge")


def _column(folder: Path, name: str) -> list[Any]:
    values: list[Any] = []
    try:
        files = parquet_files(folder)
    except FileNotFoundError:
        return values
    for file in files:
        values.extend(pq.read_table(file, columns=[name]).column(name).to_pylist())
    return values


def _metrics(result: Any) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
    tokens: dict[str, dict[str, int]] = {}
    busy: dict[str, float] = {}
    if result is None:
        return tokens, busy
    try:
        counters = result.metrics().query()["counters"]
    except Exception:
        return tokens, busy
    for counter in counters:
        namespace, name = counter.key.metric.namespace, counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        if namespace == "tokens":
            role, _, kind = name.partition(".")
            tokens.setdefault(role, {"prompt": 0, "completion": 0, "requests": 0})
            tokens[role][kind] = tokens[role].get(kind, 0) + int(value or 0)
        elif namespace == "time_ms":
            busy[name] = busy.get(name, 0.0) + (value or 0) / 1000.0
    return tokens, busy


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def build_manifest(
    config: RunConfig, out: Path, result: Any, started_at: float, finished_at: float
) -> dict[str, Any]:
    counts = {folder: count_rows(out / folder) for folder in OUTPUT_FOLDERS}
    failure_stages = Counter(_column(out / "failures", "stage"))
    failure_types = Counter(
        f"{s}:{t}"
        for s, t in zip(
            _column(out / "failures", "stage"), _column(out / "failures", "error_type"),
            strict=True,
        )
    )
    tokens, busy = _metrics(result)
    planned_agents = math.ceil(config.episodes / config.tasks_per_agent)
    episode_failures = sum(failure_stages.get(s, 0) for s in EPISODE_STAGES)
    judged = counts["sft"] + counts["rejected"]
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
            "passed": counts["sft"],
            "pass_rate": round(counts["sft"] / judged, 4) if judged else None,
        },
        "end_reasons": dict(sorted(Counter(_column(out / "trajectories", "end_reason")).items())),
        "models": {role: getattr(config.models, role).display_name() for role in ROLES},
        "tokens": dict(sorted(tokens.items())),
        "timings": {
            "wall_seconds": round(finished_at - started_at, 1),
            "stage_busy_seconds": {k: round(v, 1) for k, v in sorted(busy.items())},
        },
    }
