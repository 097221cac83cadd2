"""`agentmill rollout`: play every `rl/` task K times with a policy, score it, write Parquet.

The policy is the agent role: any model the mill can talk to (an OpenAI-compatible endpoint or
the in-process vLLM backend). Each rollout is the task's environment (`pipelines.envs`) driven by
the policy (`simulators.episode.drive`), so rollouts, the mill's episodes and `serve-env` share
every role, check and reward. Up to `in_flight` rollouts run at once in one event loop.

Output (`DIR/`): `rollouts/` (the `sft/` message shape plus `sample`, `reward`, `outcome_reward`,
`process_reward`, `reward_parts`, `reward_reasons`), `failures/` (rollouts that could not
finish, and unusable `rl/` rows), `manifest.json` (counts that reconcile, pass^k, mean rewards per
domain and difficulty). Finished rollouts are flushed in small part files, so a rerun with the
same `--out` skips them and plays only what is missing (a larger K adds samples).

pass^k is tau-bench's: for a task tried n times with c successes, C(c, k) / C(n, k), the
chance that k tries drawn from the n all succeed, averaged over tasks. A success is an outcome
reward of 1 (a task without an expected outcome counts by its total reward reaching 1); a
failed rollout counts as a try that did not succeed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.batching import failure_from
from pipelines.envs import RunEnvironments
from pipelines.parquet_io import read_rows
from pipelines.runtime import model
from pipelines.shared import stable_seed
from schemas.arrow import _TRAJECTORY_FIELDS, FAILURE_SCHEMA, to_row
from schemas.records import Failure, RLTask, canonical_json
from simulators.episode import drive
from simulators.llm.config import ModelConfig
from simulators.sandbox import SandboxUnavailable

ROLLOUT_SCHEMA = pa.schema(
    [
        *_TRAJECTORY_FIELDS,
        ("sample", pa.int64()),
        ("difficulty", pa.string()),
        ("reward", pa.float64()),
        ("outcome_reward", pa.float64()),
        ("process_reward", pa.float64()),
        ("reward_parts", pa.string()),
        ("reward_reasons", pa.list_(pa.string())),
    ]
)
FLUSH_EVERY = 32
FLUSH_SECONDS = 30.0


class RolloutError(ValueError):
    """A rollout that cannot start (bad folder, another config's rollouts in `--out`)."""


def pass_hat_k(trials: list[tuple[int, int]], k: int) -> float | None:
    """tau-bench's pass^k over tasks given as (tries, successes); None when no task has k tries."""
    scores = [math.comb(c, k) / math.comb(n, k) for n, c in trials if n >= k]
    return round(sum(scores) / len(scores), 6) if scores else None


def _succeeded(row: dict[str, Any]) -> bool:
    outcome = row.get("outcome_reward")
    return (outcome if outcome is not None else row.get("reward") or 0.0) >= 1.0


def summarize(rows: list[dict[str, Any]], failures: list[str], k: int) -> dict[str, Any]:
    """pass^1..pass^k and mean rewards per domain and difficulty, from the rollout rows.

    `failures` are the `task_id#sample` keys of rollouts that failed: tries without success."""
    tries: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        tries[row["task_id"]].append(_succeeded(row))
    for key in failures:
        tries[key.rpartition("#")[0]].append(False)
    trials = [(len(v), sum(v)) for v in tries.values()]
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for group in (f"domain:{row['domain']}", f"difficulty:{row['difficulty']}", "all"):
            for name in ("reward", "outcome_reward", "process_reward"):
                if row.get(name) is not None:
                    groups[group][name].append(row[name])
    means = {
        group: {
            **{f"mean_{name}": round(sum(v) / len(v), 4) for name, v in values.items()},
            "rollouts": len(values.get("reward", [])),
        }
        for group, values in sorted(groups.items())
    }
    return {
        "pass_hat_k": {str(i): pass_hat_k(trials, i) for i in range(1, k + 1)},
        "means": means,
    }


def _write_part(folder: Path, schema: pa.Schema, rows: list[dict[str, Any]]) -> None:
    """A part file, written under a temporary name and renamed, so a crash leaves no half file."""
    if not rows:
        return
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns()}-{os.getpid()}.parquet"
    temporary = folder / f".{name}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), temporary)
    os.replace(temporary, folder / name)


def _existing(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rollouts = read_rows(out / "rollouts") if (out / "rollouts").is_dir() else []
    failures = read_rows(out / "failures") if (out / "failures").is_dir() else []
    return rollouts, failures


def rollout_key(envs: RunEnvironments, policy: ModelConfig) -> str:
    """What makes rollouts comparable: the policy, the roles, the episode and reward settings."""
    cfg = envs.config
    body = {
        "policy": policy.model_dump(mode="json", exclude={"api_key"}),
        "user": cfg.models.user.model_dump(mode="json", exclude={"api_key"}),
        "tool": cfg.models.tool.model_dump(mode="json", exclude={"api_key"}),
        "episode": cfg.episode.model_dump(mode="json"),
        "reward": cfg.reward.model_dump(mode="json"),
        "seed": cfg.seed,
        "tasks": sorted(envs.tasks),
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def rollout_row(result_row: dict[str, Any]) -> dict[str, Any]:
    return {name: result_row.get(name) for name in ROLLOUT_SCHEMA.names}


async def _play(
    envs: RunEnvironments, policy: ModelConfig, task: RLTask, sample: int
) -> dict[str, Any]:
    env = envs.make(task.task_id)
    env.model_names = {**env.model_names, "agent": policy.display_name()}
    seed = stable_seed(envs.config.seed, "rollout", task.task_id, sample)
    await env.reset(seed)
    try:
        result = await drive(env, model(policy))
    finally:
        env.close()  # a task's workspace folder goes, also when the rollout fails
    assert env.trajectory is not None
    parts = result.reward_parts
    row = to_row(env.trajectory)
    row.update(
        sample=sample,
        difficulty=task.difficulty,
        reward=result.reward,
        outcome_reward=parts.get("outcome"),
        process_reward=parts.get("process"),
        reward_parts=json.dumps(parts, sort_keys=True),
        reward_reasons=list(result.reasons),
    )
    return rollout_row(row)


def rollout(
    run_dir: str | Path,
    out: str | Path,
    k: int,
    *,
    policy: ModelConfig | None = None,
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    in_flight: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    all_started: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Play every task of `run_dir`'s `rl/` K times into `out`; returns the manifest."""
    if k < 1:
        raise RolloutError(f"--k must be at least 1, not {k}")
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "rl").is_dir():
        raise RolloutError(f"{run_dir / 'rl'}: no such folder; is {run_dir} a run folder?")
    envs = RunEnvironments.open(run_dir, config_path, overrides)
    try:
        envs.require_sandbox()  # before anything is written: no rollout fails for it later
    except SandboxUnavailable as exc:
        raise RolloutError(f"{run_dir}: {exc}") from exc
    policy = policy or envs.config.models.agent
    key = rollout_key(envs, policy)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "rollout.json"
    if state_file.exists():
        previous = json.loads(state_file.read_text(encoding="utf-8")).get("key")
        if previous != key:
            raise RolloutError(
                f"{out} holds rollouts of another policy, config or task set ({previous}, "
                f"now {key}); choose another --out"
            )
    state_file.write_text(json.dumps({"key": key, "run_dir": str(run_dir)}), encoding="utf-8")
    started = time.time()
    done_rows, done_failures = _existing(out)
    done = {(r["task_id"], int(r["sample"])) for r in done_rows}
    for failure in done_failures:
        if failure["stage"] == "rollout_episode":
            task_id, _, sample = failure["input_id"].rpartition("#")
            done.add((task_id, int(sample)))
    known_bad = {f["input_id"] for f in done_failures}
    new_row_failures = [f for f in envs.failures if f.input_id not in known_bad]
    todo = [
        (task, sample)
        for task in sorted(envs.tasks.values(), key=lambda t: t.task_id)
        for sample in range(k)
        if (task.task_id, sample) not in done
    ]
    limit = in_flight or envs.config.in_flight
    from pipelines.runtime import run as run_async

    new_rows, new_failures = run_async(
        _play_all(envs, policy, todo, limit, out, progress, all_started)
    )
    _write_part(out / "failures", FAILURE_SCHEMA, [to_row(f) for f in new_row_failures])
    all_rows = done_rows + new_rows
    all_failures = done_failures + [to_row(f) for f in new_failures + new_row_failures]
    failed = [
        f["input_id"] for f in all_failures
        if f["stage"] == "rollout_episode" and int(f["input_id"].rpartition("#")[2]) < k
    ]
    in_range = [r for r in all_rows if r["sample"] < k]
    expected = len(envs.tasks) * k
    summary = summarize(in_range, failed, k)
    counts = {
        "tasks": len(envs.tasks),
        "k": k,
        "expected": expected,
        "rollouts": len(in_range),
        "failures": len(failed),
        "bad_rl_rows": sum(1 for f in all_failures if f["stage"] == "rollout"),
        "reward_1": sum(1 for r in in_range if (r["reward"] or 0.0) >= 1.0),
        "reused": len(done),
    }
    manifest = {
        "run_dir": str(run_dir),
        "key": key,
        "policy": policy.display_name(),
        "roles": {r: getattr(envs.config.models, r).display_name() for r in ("user", "tool")},
        "counts": counts,
        "reconcile": {
            "ok": counts["expected"] == counts["rollouts"] + counts["failures"],
            "rule": "tasks x k = rollouts + failures",
        },
        **summary,
        "reward_config": envs.config.reward.model_dump(mode="json"),
        "timings": {"wall_seconds": round(time.time() - started, 2), "in_flight": limit},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


async def _play_all(
    envs: RunEnvironments,
    policy: ModelConfig,
    todo: list[tuple[RLTask, int]],
    limit: int,
    out: Path,
    progress: Callable[[int, int], None] | None,
    all_started: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Play `todo` with at most `limit` in flight, flushing finished rollouts as they come."""
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    pending_rows: list[dict[str, Any]] = []
    pending_failures: list[Failure] = []
    last_flush = time.monotonic()
    queue = iter(todo)
    finished = 0

    def flush() -> None:
        nonlocal last_flush
        _write_part(out / "rollouts", ROLLOUT_SCHEMA, pending_rows)
        _write_part(out / "failures", FAILURE_SCHEMA, [to_row(f) for f in pending_failures])
        pending_rows.clear()
        pending_failures.clear()
        last_flush = time.monotonic()

    async def one(task: RLTask, sample: int) -> None:
        nonlocal finished
        try:
            row = await _play(envs, policy, task, sample)
            rows.append(row)
            pending_rows.append(row)
        except Exception as exc:  # a rollout's failure is a record, never a crash
            failure = failure_from("rollout_episode", f"{task.task_id}#{sample}", exc)
            failures.append(failure)
            pending_failures.append(failure)
        finished += 1
        if progress is not None:
            progress(finished, len(todo))
        pending = len(pending_rows) + len(pending_failures)
        if pending >= FLUSH_EVERY or time.monotonic() - last_flush > FLUSH_SECONDS:
            flush()

    started_all = False

    async def worker() -> None:
        nonlocal started_all
        for task, sample in queue:
            await one(task, sample)
        if not started_all and all_started is not None:  # the first idle worker: none left
            started_all = True
            all_started()

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(limit, len(todo))))))
    finally:
        flush()
    return rows, failures
