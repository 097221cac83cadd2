"""The numbers about a run that the dataset card shows and `agentmill stats` prints.

One function computes them from the manifest and the Parquet that landed, so the card and the
terminal can never disagree. Token estimates for data (not model usage) are characters / 4, a
cheap, tokenizer-free figure that is close for English text and JSON under BPE vocabularies.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any

from pipelines import storage
from pipelines.parquet_io import iter_rows, read_column

JUDGE_REJECTED = "judge: score below threshold"


def approx_tokens(text: str) -> int:
    """Characters / 4, rounded up: the token estimate used for data sizes and shard balance."""
    return math.ceil(len(text) / 4)


def message_text(messages: list[dict[str, Any]]) -> str:
    """Every piece of text a chat carries (contents and call arguments), for token estimates."""
    parts: list[str] = []
    for message in messages or []:
        parts.append(message.get("content") or "")
        for call in message.get("tool_calls") or []:
            fn = call["function"]
            arguments = fn["arguments"]
            parts.append(fn["name"])
            parts.append(arguments if isinstance(arguments, str) else json.dumps(arguments))
    return "".join(parts)


def tool_calls(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("tool_calls") or []) for m in messages or [])


def is_tool_error(content: str | None) -> bool:
    """A tool answer shaped like an API error: a JSON object with an `error` key."""
    if not content or not content.lstrip().startswith("{"):
        return False
    try:
        body = json.loads(content)
    except json.JSONDecodeError:
        return False
    return isinstance(body, dict) and "error" in body


def has_tool_error(messages: list[dict[str, Any]]) -> bool:
    return any(m["role"] == "tool" and is_tool_error(m.get("content")) for m in messages or [])


def rejection_reasons(failed_checks: list[str] | None, detail: bool = False) -> list[str]:
    """Why a trajectory was rejected: the checks it failed, else the judge's score.

    A failed check reads `name: what happened`; counts group by name, `detail` keeps the rest.
    """
    checks = [c if detail else c.split(":", 1)[0] for c in failed_checks or []]
    return [f"check: {check}" for check in checks] or [JUDGE_REJECTED]


def read_manifest(out: str | Any) -> dict[str, Any]:
    path = storage.run_path(out) / "manifest.json"
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no manifest.json; is this a run folder?")
    return json.loads(storage.read_text(path))


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def _rows(
    folder: Any, columns: list[str], keep: Callable[[dict[str, Any]], dict[str, Any]] = dict
) -> list[dict[str, Any]]:
    """What `keep` takes of each row, read a batch at a time: the stats of a large run hold a
    few numbers per trajectory, never every trajectory's messages at once."""
    try:
        return [keep(row) for row in iter_rows(folder, columns)]
    except FileNotFoundError:
        return []


def _episode(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    return {"turns": int(row["turns"] or 0), "calls": tool_calls(messages),
            "tool_error": has_tool_error(messages), "domain": row["domain"],
            "end_reason": row["end_reason"]}


def _passed(row: dict[str, Any]) -> dict[str, Any]:
    tokens = approx_tokens(message_text(row["messages"]) + (row["tools"] or ""))
    return {"tokens": tokens, **{k: row[k] for k in ("judge_score", "reward", "judge_agreement")}}


def _committee_and_reward(
    sft: list[dict[str, Any]], judged_rejected: list[dict[str, Any]]
) -> dict[str, Any]:
    """Inter-judge agreement (committees) and the judge's false-pass rate: of the judged
    trajectories whose verifiable reward is 0, the share the judge passed anyway."""
    judged = sft + judged_rejected
    agreement = [r["judge_agreement"] for r in judged if r.get("judge_agreement") is not None]
    failed_outcome = [r for r in judged if r.get("reward") == 0]
    false_passes = sum(1 for r in sft if r.get("reward") == 0)
    return {
        "agreement": _mean(agreement),
        "with_committee": len(agreement),
        "reward_0": len(failed_outcome),
        "false_pass_rate": round(false_passes / len(failed_outcome), 4)
        if failed_outcome else None,
    }


def run_stats(out: str | Any, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the card and `agentmill stats` report about the run in `out`."""
    out = storage.run_path(out)
    manifest = manifest if manifest is not None else read_manifest(out)
    episodes = _rows(
        out / "trajectories", ["messages", "turns", "domain", "end_reason"], _episode
    )
    turns = [r["turns"] for r in episodes]
    calls = [r["calls"] for r in episodes]
    # `reward` and `judge_agreement` read as nulls from runs made before they existed.
    sft = _rows(
        out / "sft", ["messages", "tools", "judge_score", "reward", "judge_agreement"], _passed
    )
    rejected = _rows(
        out / "rejected", ["judge_score", "failed_checks", "reward", "judge_agreement"]
    )
    passed_scores = [r["judge_score"] for r in sft if r["judge_score"] is not None]
    # A trajectory the checks rejected never reached the judge: it has no judge score, and it
    # counts as a check rejection, not as a judged one (older runs stored 0.0 for it).
    by_judge = [r for r in rejected if not r["failed_checks"]]
    rejected_scores = [r["judge_score"] for r in by_judge if r["judge_score"] is not None]

    reasons: Counter[str] = Counter()
    for row in rejected:
        reasons.update(rejection_reasons(row["failed_checks"]))
    failure_stages = read_column(out / "failures", "stage")
    failure_types = read_column(out / "failures", "error_type")
    reasons.update(f"failure: {s}: {t}" for s, t in zip(failure_stages, failure_types, strict=True))

    usage = manifest.get("tokens", {})
    config = manifest.get("config", {})
    sft_tokens = sum(r["tokens"] for r in sft)
    return {
        "name": out.name,
        "fingerprint": manifest.get("fingerprint"),
        "agentmill_version": manifest.get("agentmill_version"),
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "wall_seconds": manifest.get("timings", {}).get("wall_seconds"),
        "counts": manifest.get("counts", {}),
        "reconcile_ok": manifest.get("reconcile", {}).get("ok"),
        "models": manifest.get("models", {}),
        "judge": {
            "judged": len(sft) + len(by_judge),
            "rejected_by_checks": len(rejected) - len(by_judge),
            "passed": len(sft),
            "pass_rate": round(len(sft) / (len(sft) + len(by_judge)), 4) if sft or by_judge
            else None,
            "threshold": config.get("judge", {}).get("pass_threshold"),
            "mean_score": _mean(passed_scores + rejected_scores),
            "mean_score_passed": _mean(passed_scores),
            "mean_score_rejected": _mean(rejected_scores),
            **_committee_and_reward(sft, by_judge),
        },
        "tokens": {
            "by_role": usage,
            "by_model": manifest.get("tokens_by_model", {}),
            "prompt": sum(t.get("prompt", 0) for t in usage.values()),
            "completion": sum(t.get("completion", 0) for t in usage.values()),
            "requests": sum(t.get("requests", 0) for t in usage.values()),
            "sft_estimate": sft_tokens,
        },
        "episodes": {
            "count": len(episodes),
            "mean_turns": _mean(turns),
            "mean_tool_calls": _mean(calls),
            "with_tool_call": sum(1 for c in calls if c),
            "with_tool_error": sum(1 for r in episodes if r["tool_error"]),
            "end_reasons": dict(Counter(r["end_reason"] for r in episodes).most_common()),
        },
        "domains": dict(Counter(r["domain"] for r in episodes).most_common()),
        "failure_reasons": dict(reasons.most_common()),
        "series": {
            "turns": turns,
            "tool_calls": calls,
            "scores_passed": passed_scores,
            "scores_rejected": rejected_scores,
        },
    }


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def summary_rows(stats: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(section, statistic, value) rows: the shared content of the card's and the CLI's tables."""
    judge, tokens, episodes = stats["judge"], stats["tokens"], stats["episodes"]
    rows: list[tuple[str, str, Any]] = [
        ("run", "config fingerprint", stats["fingerprint"]),
        ("run", "made", f"{stats['started_at']} to {stats['finished_at']}"),
        ("run", "wall seconds", stats["wall_seconds"]),
        ("run", "counts reconcile", stats["reconcile_ok"]),
    ]
    rows += [("rows", folder, n) for folder, n in stats["counts"].items()]
    rows += [
        ("checks", "rejected by checks (not judged)", judge["rejected_by_checks"]),
        ("judge", "judged", judge["judged"]),
        ("judge", "passed", judge["passed"]),
        ("judge", "pass rate", pct(judge["pass_rate"])),
        ("judge", "pass threshold", judge["threshold"]),
        ("judge", "mean score", judge["mean_score"]),
        ("judge", "mean score, passed", judge["mean_score_passed"]),
        ("judge", "mean score, rejected", judge["mean_score_rejected"]),
        ("judge", "inter-judge agreement", judge["agreement"]),
        ("judge", "false-pass rate (reward 0, passed)", pct(judge["false_pass_rate"])),
        ("episodes", "episodes", episodes["count"]),
        ("episodes", "mean user turns", episodes["mean_turns"]),
        ("episodes", "mean tool calls", episodes["mean_tool_calls"]),
        ("episodes", "with a tool call", episodes["with_tool_call"]),
        ("episodes", "with a tool error", episodes["with_tool_error"]),
    ]
    rows += [("end reason", reason, n) for reason, n in episodes["end_reasons"].items()]
    rows += [("domain", domain, n) for domain, n in stats["domains"].items()]
    rows += [
        ("tokens", "model requests", tokens["requests"]),
        ("tokens", "prompt tokens", tokens["prompt"]),
        ("tokens", "completion tokens", tokens["completion"]),
        ("tokens", "sft tokens (chars/4)", tokens["sft_estimate"]),
    ]
    rows += [
        ("tokens by model", model, f"{t.get('prompt', 0)} prompt, {t.get('completion', 0)} "
         f"completion, {t.get('requests', 0)} requests")
        for model, t in tokens["by_model"].items()
    ]
    rows += [("rejected or failed", reason, n) for reason, n in stats["failure_reasons"].items()]
    return rows
