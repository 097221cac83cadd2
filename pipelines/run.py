"""The end-to-end mill: tool specs in, SFT and RL Parquet out, with a manifest and dataset card.

`run(config)` builds the pipeline on Beam's in-process runner (no Prism download), runs it, then
writes `manifest.json` and `README.md` from what actually landed on disk.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines import runtime, storage
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
from toolspecs.load import LIBRARY


def build(pipeline: beam.Pipeline, config: RunConfig) -> None:
    """Add every stage of the mill to `pipeline`, writing under `config.out`."""
    out = config.out.rstrip("/")
    paths = config.toolspecs or [str(LIBRARY)]

    if config.domain:  # a tau-bench-like domain brings its own agent and tasks
        specs, agents, tasks, domain_failures = pipeline | "LoadDomain" >> LoadDomain(config)
        front_failures: tuple[Any, ...] = (domain_failures,)
    else:
        loaded = pipeline | "LoadToolSpecs" >> LoadToolSpecs(paths)
        specs = loaded.specs
        composed = specs | "ComposeAgents" >> ComposeAgents(config)
        agents = composed.agents | "DropSlot" >> beam.Map(lambda pair: pair[1])
        generated = composed.agents | "GenerateTasks" >> GenerateTasks(config)
        tasks = generated.tasks
        front_failures = (loaded.failures, composed.failures, generated.failures)

    pairs = join_tasks_with_agents(tasks, agents, "Episodes")
    played = pairs | "RunEpisodes" >> RunEpisodes(config)
    trajectories = played.trajectories
    judged = (
        join_trajectories_with_tasks(trajectories, tasks)
        | "JudgeTrajectories" >> JudgeTrajectories(config)
    )
    rl = join_tasks_with_agents(tasks, agents, "RL") | "ToRLTasks" >> beam.Map(rl_task)

    failures = (
        *front_failures,
        played.failures,
        judged.failures,
    ) | "AllFailures" >> beam.Flatten()

    _ = specs | "WriteToolSpecs" >> WriteRecords(
        f"{out}/toolspecs", arrow.TOOLSPEC_SCHEMA, arrow.to_row
    )
    _ = agents | "WriteAgents" >> WriteRecords(f"{out}/agents", arrow.AGENT_SCHEMA, arrow.to_row)
    _ = tasks | "WriteTasks" >> WriteRecords(f"{out}/tasks", arrow.TASK_SCHEMA, arrow.to_row)
    _ = trajectories | "WriteTrajectories" >> WriteRecords(
        f"{out}/trajectories", arrow.TRAJECTORY_SCHEMA, arrow.to_row
    )
    _ = judged.passed | "WriteSFT" >> WriteRecords(
        f"{out}/sft", arrow.SFT_SCHEMA, lambda pair: arrow.sft_row(*pair)
    )
    _ = judged.rejected | "WriteRejected" >> WriteRecords(
        f"{out}/rejected", arrow.REJECTED_SCHEMA, arrow.rejected_row
    )
    _ = rl | "WriteRL" >> WriteRecords(f"{out}/rl", arrow.RL_SCHEMA, arrow.to_row)
    _ = failures | "WriteFailures" >> WriteRecords(
        f"{out}/failures", arrow.FAILURE_SCHEMA, _failure_row
    )


def _failure_row(failure: Failure) -> dict[str, Any]:
    return arrow.to_row(failure)


def in_process_pipeline() -> beam.Pipeline:
    """A pipeline on the in-process portable runner: no Prism binary, shared model clients."""
    return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))


def run(config: RunConfig, pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Run the mill for `config` and return the manifest it wrote.

    `config.out` may be a local folder or a URI (`gs://...`) that Beam's filesystems can write.
    """
    out = storage.run_path(config.out)
    _prepare_output(out)
    started = time.time()
    print(
        f"agentmill: {config.episodes} episodes -> {out} (config {config.fingerprint()})",
        file=sys.stderr,
        flush=True,
    )
    pipeline = pipeline or in_process_pipeline()
    build(pipeline, config)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        runtime.close_models()
    manifest = build_manifest(config, out, result, started_at=started, finished_at=time.time())
    storage.write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    write_card(out, manifest)
    return manifest


def _prepare_output(out: storage.RunPath) -> None:
    """Clear this run's stage folders, so no stale shard of an earlier run mixes in."""
    if isinstance(out, Path):
        out.mkdir(parents=True, exist_ok=True)
    for name in (*OUTPUT_FOLDERS, "plots", "manifest.json", "README.md"):
        storage.remove_tree(out / name)
