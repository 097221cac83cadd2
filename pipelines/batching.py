"""The DoFn shape every model-driven stage shares: a batch in, concurrent coroutines, results out.

Elements of a batch run at once on the process's loop against one shared client, so the engine
always has work; results are emitted as each finishes, and an element that cannot be processed
becomes a Failure instead of failing the bundle.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines import runtime
from schemas.records import Failure, TokenCount

FAILURES = "failures"
Handled = tuple[list[Any], dict[str, TokenCount]]

_progress_lock = threading.Lock()
_progress: dict[str, int] = {}
_started = time.monotonic()


def report_progress(stage: str, note: str, total: int | None = None) -> None:
    """One progress line on stderr per finished element, so a user sees the run moving."""
    with _progress_lock:
        _progress[stage] = _progress.get(stage, 0) + 1
        done = _progress[stage]
    of = f"/{total}" if total else ""
    elapsed = time.monotonic() - _started
    print(f"[{elapsed:6.0f}s] {stage:<9} {done}{of} {note}", file=sys.stderr, flush=True)


def count_tokens(usage: dict[str, TokenCount]) -> None:
    """Token and request counters per role, which the manifest reads back from Beam metrics."""
    for role, tokens in usage.items():
        Metrics.counter("tokens", f"{role}.prompt").inc(tokens.prompt)
        Metrics.counter("tokens", f"{role}.completion").inc(tokens.completion)
        Metrics.counter("tokens", f"{role}.requests").inc(tokens.requests)


class AsyncBatchFn(beam.DoFn):
    """Runs `handle` for every element of a batch concurrently; subclasses define `handle`."""

    stage = "stage"

    def __init__(self, total: int | None = None) -> None:
        self.total = total

    def handle(self, element: Any) -> Coroutine[Any, Any, Handled]:
        """Outputs and token usage for one element; raising makes it a Failure."""
        raise NotImplementedError

    def failure(self, element: Any, error: BaseException) -> Failure:
        raise NotImplementedError

    async def _guarded(self, element: Any) -> tuple[Any, Handled | BaseException]:
        try:
            outcome: Handled | BaseException = await self.handle(element)
        except Exception as exc:
            outcome = exc
        return element, outcome

    def process(self, batch: Iterable[Any]) -> Iterator[Any]:
        started = time.monotonic()
        for future in runtime.as_completed([self._guarded(e) for e in batch]):
            element, outcome = future.result()
            # Beam metrics are per thread: count here, not on the loop thread that ran handle.
            if isinstance(outcome, BaseException):
                count_tokens(getattr(outcome, "usage", None) or {})
                failure = self.failure(element, outcome)
                Metrics.counter(self.stage, "failures").inc()
                report_progress(self.stage, f"failed: {failure.error_type}", self.total)
                yield beam.pvalue.TaggedOutput(FAILURES, failure)
                continue
            outputs, usage = outcome
            count_tokens(usage)
            yield from outputs
            report_progress(self.stage, self.note(outputs), self.total)
        Metrics.counter("time_ms", self.stage).inc(int((time.monotonic() - started) * 1000))

    def note(self, outputs: list[Any]) -> str:
        return "ok"


def failure_from(stage: str, input_id: str, error: BaseException, source: str = "") -> Failure:
    """A Failure record for `error`, keeping the model's last raw output when there is one."""
    raw = getattr(error, "raw_output", None)
    return Failure(
        stage=stage,
        input_id=input_id,
        error_type=type(error).__name__,
        error=str(error) or repr(error),
        source=source,
        raw_output=raw[:4000] if isinstance(raw, str) else None,
    )
