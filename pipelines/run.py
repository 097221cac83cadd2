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

from pipelines import outdir, progress, runtime, storage
from pipelines import resume as checkpoints
from pipelines.batching import STOP, RunStopped
from pipelines.card import write_card
from pipelines.config import RunConfig
from pipelines.manifest import build_manifest
from pipelines.parquet_io import OUTPUT_FOLDERS, WriteRecords
from pipelines.shared import LoadToolSpecs, in_process_pipeline
from pipelines.stages import (
    ComposeAgents,
    GenerateTasks,
    JudgeTrajectories,
    LoadDomain,
    RunEpisodes,
    join_tasks_with_agents,
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

    def with_reused(stage: type[Any], fresh: Any, parents: Any = None) -> Any:
        """`fresh` (the stage's output) plus its work reused from the checkpoint, read back by
        the stage's own codec in the same shape; `parents`: what its records were made from."""
        codec = stage.codec
        if resume is None or not resume.chosen.get(codec.stage):
            return fresh
        inputs = {"fresh": fresh} if parents is None else {"fresh": fresh, "parents": parents}
        label = f"Reused{codec.stage.capitalize()}"
        return inputs | label >> checkpoints.WithReused(codec, resume)

    if config.domain:  # a tau-bench-like domain brings its own agent and tasks (no model)
        specs, agents, tasks, domain_failures = pipeline | "LoadDomain" >> LoadDomain(config)
        front_failures: tuple[Any, ...] = (domain_failures,)
        pairs = join_tasks_with_agents(tasks, agents, "Episodes")  # no model work before it
    else:
        loaded = pipeline | "LoadToolSpecs" >> LoadToolSpecs(paths)
        specs = loaded.specs
        composed = specs | "ComposeAgents" >> ComposeAgents(config, control("agents"))
        slotted = with_reused(ComposeAgents, composed.agents)
        agents = slotted | "DropSlot" >> beam.Map(lambda pair: pair[1])
        generated = slotted | "GenerateTasks" >> GenerateTasks(config, control("tasks"))
        # New tasks come with their agent: no barrier before the episodes.
        pairs = with_reused(GenerateTasks, generated.pairs, agents)
        tasks = pairs | "Tasks" >> beam.Map(lambda pair: pair[0])
        front_failures = (loaded.failures, composed.failures, generated.failures)

    played = pairs | "RunEpisodes" >> RunEpisodes(config, control("episodes"))
    episodes = with_reused(RunEpisodes, played.judge_inputs, tasks)
    trajectories = episodes | "Trajectories" >> beam.Map(lambda pair: pair[0])
    judged = episodes | "JudgeTrajectories" >> JudgeTrajectories(config, control("judge"))
    verdicts = with_reused(JudgeTrajectories, judged.judged, trajectories)
    passed, rejected = verdicts | "Verdicts" >> beam.Partition(
        lambda item, _: 0 if item.judgement.passed else 1, 2
    )
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
        f"{out}/sft", arrow.SFT_SCHEMA, _defused(arrow.passed_row)
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
