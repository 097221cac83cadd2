"""Beam helpers both pipelines use: the mill (`pipelines/run.py`) and the tool pool
(`pipelines/pool.py`), and the benchmarks and tests that drive their stages.

Seeds, batching, loading spec files, the in-process runner and reading back a run's counters
live here once, so neither pipeline reaches into the other's modules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.batching import FAILURES
from schemas.records import Failure
from toolspecs.load import load_file, spec_files


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from `parts`, stable across processes (unlike `hash`)."""
    text = ":".join(str(p) for p in parts)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def fixed_batches(size: int) -> beam.BatchElements:
    """Batches of `size` (fewer at a bundle's end).

    Beam's default adaptive batching starts at one element and grows with measured time, which
    would run the first episodes one at a time and leave the engine idle.
    """
    return beam.BatchElements(min_batch_size=size, max_batch_size=size)


class _LoadFileFn(beam.DoFn):
    def process(self, path: str) -> Iterator[Any]:
        for item in load_file(path):
            if isinstance(item, Failure):
                yield beam.pvalue.TaggedOutput(FAILURES, item)
            else:
                yield item


class LoadToolSpecs(beam.PTransform):
    """Spec files -> ToolSpecs (main output) and Failures (tagged `failures`)."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths

    def expand(self, pbegin: beam.pvalue.PBegin) -> Any:
        files = [str(p) for p in spec_files(self.paths)]
        return (
            pbegin
            | "SpecFiles" >> beam.Create(files)
            | "Reshuffle" >> beam.Reshuffle()
            | "Load" >> beam.ParDo(_LoadFileFn()).with_outputs(FAILURES, main="specs")
        )


def in_process_pipeline() -> beam.Pipeline:
    """A pipeline on the in-process portable runner: no Prism binary, shared model clients."""
    return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))


TOKEN_FIELDS = ("prompt", "completion", "requests", "retries", "wait_s")


def pipeline_metrics(result: Any) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Per-role token, request, retry and model-wait totals, and busy seconds per stage, from a
    finished pipeline's counters (None or a runner without metrics: empty)."""
    tokens: dict[str, dict[str, Any]] = {}
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
            entry = tokens.setdefault(role, dict.fromkeys(TOKEN_FIELDS, 0))
            if kind == "wait_us":
                entry["wait_s"] = round(entry["wait_s"] + int(value or 0) / 1e6, 3)
            else:
                entry[kind] = entry.get(kind, 0) + int(value or 0)
        elif namespace == "time_ms":
            busy[name] = busy.get(name, 0.0) + (value or 0) / 1000.0
    return tokens, busy
