"""The end-to-end mill: tool specs in, SFT and RL Parquet out, with a manifest and dataset card.

`run(config)` builds the pipeline on Beam's in-process runner (no Prism download), runs it, then
writes `manifest.json` and `README.md` from what actually landed on disk.

Finished work is checkpointed as it finishes (`pipelines/resume.py`), so a run that was killed or
stopped resumes when the same command runs again: the output folders are then written anew from
the reused and the new work. Ctrl-C asks every stage to stop gracefully (a second Ctrl-C abandons
what is in flight); a stage whose failures pass `control.max_failure_rate` stops the run too.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines import outdir, progress, runtime, storage
from pipelines import resume as checkpoints
from pipelines.batching import STOP, RunStopped
from pipelines.card import write_card
from pipelines.config import RunConfig
from pipelines.manifest import build_manifest
from pipelines.parquet_io import OUTPUT_FOLDERS, WriteRecords
from pipelines.stages import (
    ComposeAgents,
    GenerateTasks,
    JudgeTrajectories,
    LoadDomain,
    LoadToolSpecs,
    RunEpisodes,
    join_tasks_with_agents,
    join_trajectories_with_tasks,
    rl_task,
)
from schemas import arrow
from schemas.records import Failure
from simulators.llm.toolcall import defuse_written
from toolspecs.load import LIBRARY


def build(
    pipeline: beam.Pipeline, config: RunConfig, resume: checkpoints.Resume | None = None
) -> None:
    """Add every stage of the mill to `pipeline`, writing under `config.out`.

    With `resume`, stages checkpoint what they finish and the work it holds is reused.
    """
    out = config.out.rstrip("/")
    paths = config.toolspecs or [str(LIBRARY)]

    def control(stage: str) -> checkpoints.StageControl | None:
        return resume.control(stage, config) if resume is not None else None

    olds: dict[str, Any] = {}

    def reused(stage: str, fresh: Any) -> Any:
        """`fresh` plus the stage's outputs reused from the checkpoint."""
        if resume is None or not resume.chosen.get(stage):
            return fresh
        label = stage.capitalize()
        old = pipeline | f"Reused{label}" >> checkpoints.ReadCheckpoint(stage, resume.plan(stage))
        olds[stage] = old
        return (fresh, old) | f"All{label}" >> beam.Flatten()

    if config.domain:  # a tau-bench-like domain brings its own agent and tasks (no model)
        specs, agents, tasks, domain_failures = pipeline | "LoadDomain" >> LoadDomain(config)
        front_failures: tuple[Any, ...] = (domain_failures,)
        pairs = join_tasks_with_agents(tasks, agents, "Episodes")  # no model work before it
    else:
        loaded = pipeline | "LoadToolSpecs" >> LoadToolSpecs(paths)
        specs = loaded.specs
        composed = specs | "ComposeAgents" >> ComposeAgents(config, control("agents"))
        slotted = reused("agents", composed.agents)
        agents = slotted | "DropSlot" >> beam.Map(lambda pair: pair[1])
        generated = slotted | "GenerateTasks" >> GenerateTasks(config, control("tasks"))
        tasks = reused("tasks", generated.tasks)
        front_failures = (loaded.failures, composed.failures, generated.failures)
        pairs = generated.pairs  # new tasks come with their agent: no barrier before episodes
        if "tasks" in olds:  # reused tasks find their agent by a join
            again = join_tasks_with_agents(olds["tasks"], agents, "ReusedTasks")
            pairs = (pairs, again) | "AllPairs" >> beam.Flatten()

    played = pairs | "RunEpisodes" >> RunEpisodes(config, control("episodes"))
    trajectories = reused("episodes", played.trajectories)
    to_judge = played.judge_inputs
    if "episodes" in olds:
        # Reused trajectories find their task by a join; fresh ones came paired with theirs.
        again = join_trajectories_with_tasks(olds["episodes"], tasks)
        to_judge = (to_judge, again) | "AllToJudge" >> beam.Flatten()
    judged = to_judge | "JudgeTrajectories" >> JudgeTrajectories(config, control("judge"))
    if resume is not None and resume.chosen.get("judge"):
        done = frozenset(resume.chosen["judge"])
        again = checkpoints.rejoin_judgements(
            to_judge | "JudgedBefore" >> beam.Filter(lambda pair: pair[0].id in done),
            pipeline | "ReusedJudge" >> checkpoints.ReadCheckpoint("judge", resume.plan("judge")),
        )
        passed = (judged.passed, again.passed) | "AllPassed" >> beam.Flatten()
        rejected = (judged.rejected, again.rejected) | "AllRejected" >> beam.Flatten()
    else:
        passed, rejected = judged.passed, judged.rejected
    rl = pairs | "ToRLTasks" >> beam.Map(rl_task)

    failures = (
        *front_failures,
        played.failures,
        judged.failures,
    ) | "AllFailures" >> beam.Flatten()

    # Written rows have chat-template control tokens broken, as prompts do (data is trained on).
    _ = specs | "WriteToolSpecs" >> WriteRecords(
        f"{out}/toolspecs", arrow.TOOLSPEC_SCHEMA, _defused(arrow.to_row)
    )
    _ = agents | "WriteAgents" >> WriteRecords(
        f"{out}/agents", arrow.AGENT_SCHEMA, _defused(arrow.to_row)
    )
    _ = tasks | "WriteTasks" >> WriteRecords(
        f"{out}/tasks", arrow.TASK_SCHEMA, _defused(arrow.to_row)
    )
    _ = trajectories | "WriteTrajectories" >> WriteRecords(
        f"{out}/trajectories", arrow.TRAJECTORY_SCHEMA, _defused(arrow.to_row)
    )
    _ = passed | "WriteSFT" >> WriteRecords(
        f"{out}/sft", arrow.SFT_SCHEMA, _defused(lambda pair: arrow.sft_row(*pair))
    )
    _ = rejected | "WriteRejected" >> WriteRecords(
        f"{out}/rejected", arrow.REJECTED_SCHEMA, _defused(arrow.rejected_row)
    )
    _ = rl | "WriteRL" >> WriteRecords(f"{out}/rl", arrow.RL_SCHEMA, _defused(arrow.to_row))
    _ = failures | "WriteFailures" >> WriteRecords(
        f"{out}/failures", arrow.FAILURE_SCHEMA, _failure_row
    )


def _defused(to_row: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    return lambda record: defuse_written(to_row(record))


def _failure_row(failure: Failure) -> dict[str, Any]:
    return arrow.to_row(failure)


def in_process_pipeline() -> beam.Pipeline:
    """A pipeline on the in-process portable runner: no Prism binary, shared model clients."""
    return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))


def run(
    config: RunConfig, pipeline: beam.Pipeline | None = None, force: bool = False
) -> dict[str, Any]:
    """Run the mill for `config` and return the manifest it wrote.

    `config.out` may be a local folder or a URI (`gs://...`) that Beam's filesystems can write.
    It must be empty, missing or an earlier run's folder (`force`: any folder but the root), and
    no other run may hold it (`outdir.OutputError` before anything is deleted otherwise).
    Raises `RunStopped` when the run stopped early (Ctrl-C, failure brake); rerun to resume.
    """
    outdir.check_path(config.out)
    out = storage.run_path(config.out)
    try:
        with outdir.locked(out):
            outdir.claim(out, force)
            return _run_claimed(config, pipeline, out)
    except OSError as exc:
        if storage.disk_full(exc):
            raise RunStopped(_disk_full_message(out, None), 1) from None
        raise


def _run_claimed(
    config: RunConfig, pipeline: beam.Pipeline | None, out: storage.RunPath
) -> dict[str, Any]:
    _prepare_output(out)
    resume = checkpoints.prepare(config)
    reused = resume.reused()
    started = time.time()
    print(
        f"agentmill: {config.episodes} episodes -> {out} (config {config.fingerprint()})",
        file=sys.stderr,
        flush=True,
    )
    if any(reused.values()):
        print(
            "agentmill: resuming from the checkpoint: "
            + ", ".join(f"{n} {stage}" for stage, n in reused.items() if n),
            file=sys.stderr,
            flush=True,
        )
    pipeline = pipeline or in_process_pipeline()
    build(pipeline, config, resume)
    STOP.reset()
    notes = progress.start_run(config.models.by_role(), {"agents": config.tasks_per_agent})
    try:
        with _graceful_interrupt():
            result = pipeline.run()
            result.wait_until_finish()
    except Exception as exc:
        if STOP.requested:
            raise RunStopped(_stopped_message(config, resume), STOP.exit_code) from None
        if storage.disk_full(exc):
            raise RunStopped(_disk_full_message(out, resume), 1) from None
        raise
    finally:
        STOP.reset()  # a stop belongs to this run; pipelines built later start clean
        progress.end_run(notes)
        runtime.close_models()
    manifest = build_manifest(
        config, out, result, started_at=started, finished_at=time.time(), reused=reused,
        checkpoint=f"{checkpoints.WORK}/{resume.key}",
    )
    try:
        storage.write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        write_card(out, manifest)
    except OSError as exc:
        if storage.disk_full(exc):
            raise RunStopped(_disk_full_message(out, resume), 1) from None
        raise
    return manifest


def _disk_full_message(out: storage.RunPath, resume: checkpoints.Resume | None) -> str:
    kept = f"Finished work is kept in {resume.root}; " if resume is not None else ""
    return (
        f"stopped: no space left on the device holding {out} (disk full or quota exceeded). "
        f"{kept}free some space and run the same command again to resume."
    )


def _stopped_message(config: RunConfig, resume: checkpoints.Resume) -> str:
    return (
        f"stopped: {STOP.reason}. Finished work is kept in {resume.root}; run the same command "
        "again (same config) to resume."
    )


@contextmanager
def _graceful_interrupt() -> Iterator[None]:
    """Ctrl-C asks the stages to stop; a second abandons what is in flight; a third aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def handler(signum: int, frame: Any) -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            STOP.request("interrupted (Ctrl-C)", exit_code=130)
            print(
                "\nagentmill: stopping: no new work starts, what is in flight finishes and is "
                "kept (Ctrl-C again to abandon it)",
                file=sys.stderr,
                flush=True,
            )
        elif presses == 2:
            STOP.abandon = True
            print("\nagentmill: abandoning work in flight", file=sys.stderr, flush=True)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    quiet = _QuietStop()
    beam_log = logging.getLogger("apache_beam.runners.common")
    beam_log.addFilter(quiet)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        beam_log.removeFilter(quiet)


class _QuietStop(logging.Filter):
    """Beam logs a DoFn's exception with its traceback; a requested stop is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if storage.disk_full(error) or storage.disk_full(Exception(record.getMessage())):
            return False  # said once, plainly, when the run stops
        return not isinstance(error, RunStopped)


def _prepare_output(out: storage.RunPath) -> None:
    """Clear this run's stage folders, so no stale shard of an earlier run mixes in."""
    if isinstance(out, Path):
        out.mkdir(parents=True, exist_ok=True)
    for name in (*OUTPUT_FOLDERS, "plots", "manifest.json", "README.md"):
        storage.remove_tree(out / name)
