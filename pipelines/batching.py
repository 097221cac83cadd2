"""The DoFn shape every model-driven stage shares: elements in, concurrent coroutines, results out.

A stage keeps a rolling window of elements in flight on the process's loop, against one shared
client per model: a new element starts as soon as any other finishes, across batches, so the
engine always has work and no batch waits for its slowest member (a batch barrier idles the
engine). Results are emitted as each element finishes; an element that cannot be processed
becomes a Failure instead of failing the bundle.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import runtime
from schemas.records import Failure, TokenCount

FAILURES = "failures"
DEFAULT_IN_FLIGHT = 512
Handled = tuple[list[Any], dict[str, TokenCount]]

_started = time.monotonic()
inputs_done: dict[str, float] = {}
"""Per stage, when a bundle last started its final element (`time.monotonic`): from then on only
the elements already in flight are left, so the engine's load can only fall. Benchmarks read it
to tell the steady state from the drain."""


class Progress:
    """One line on stderr per finished element: count, tokens per second and ETA for a stage."""

    def __init__(self, stage: str, total: int | None) -> None:
        self.stage = stage
        self.total = total
        self.done = 0
        self.tokens = 0
        self.started: float | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self.started is None:
                self.started = time.monotonic()

    def note(self, text: str) -> None:
        """A progress line that counts nothing."""
        line = f"[{time.monotonic() - _started:6.0f}s] {self.stage:<9} {text}"
        print(line, file=sys.stderr, flush=True)

    def report(self, note: str, tokens: int = 0) -> str:
        """Count one finished element that produced `tokens` completion tokens, and print it."""
        now = time.monotonic()
        with self._lock:
            if self.started is None:
                self.started = now
            self.done += 1
            self.tokens += tokens
            done, spent = self.done, max(now - self.started, 1e-6)
            rate = self.tokens / spent
        line = f"[{now - _started:6.0f}s] {self.stage:<9} {done}"
        if self.total:
            line += f"/{self.total}"
        line += f" {note} | {rate:,.0f} tok/s"
        if self.total and done < self.total:
            line += f", ETA {_duration((self.total - done) * spent / done)}"
        print(line, file=sys.stderr, flush=True)
        return line


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"


def count_tokens(usage: dict[str, TokenCount]) -> int:
    """Token, request, retry and wait counters per role, which the manifest reads back from Beam
    metrics; returns the completion tokens counted."""
    completion = 0
    for role, tokens in usage.items():
        Metrics.counter("tokens", f"{role}.prompt").inc(tokens.prompt)
        Metrics.counter("tokens", f"{role}.completion").inc(tokens.completion)
        Metrics.counter("tokens", f"{role}.requests").inc(tokens.requests)
        if tokens.retries:
            Metrics.counter("tokens", f"{role}.retries").inc(tokens.retries)
        if tokens.wait_s:
            Metrics.counter("tokens", f"{role}.wait_us").inc(round(tokens.wait_s * 1e6))
        completion += tokens.completion
    return completion


def _windowed(output: Any) -> Any:
    """An output as `finish_bundle` must give it: a WindowedValue (in the global window)."""
    if isinstance(output, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(output.tag, _windowed(output.value))
    return WindowedValue(output, MIN_TIMESTAMP, (GlobalWindow(),))


class AsyncBatchFn(beam.DoFn):
    """Runs `handle` for every element, up to `in_flight` at once; subclasses define `handle`.

    Input is batches (lists) of elements; a batch is only a unit of delivery. Elements of later
    batches start while earlier ones still run, and the rest finish in `finish_bundle`. Outputs
    are emitted from the DoFn's own thread, since Beam counts metrics per thread.
    """

    stage = "stage"

    def __init__(self, total: int | None = None, in_flight: int = DEFAULT_IN_FLIGHT) -> None:
        self.total = total
        self.in_flight = in_flight

    def handle(self, element: Any) -> Coroutine[Any, Any, Handled]:
        """Outputs and token usage for one element; raising makes it a Failure."""
        raise NotImplementedError

    def failure(self, element: Any, error: BaseException) -> Failure:
        raise NotImplementedError

    def note(self, outputs: list[Any]) -> str:
        return "ok"

    def setup(self) -> None:
        self._progress = Progress(self.stage, self.total)

    def start_bundle(self) -> None:
        self._window = runtime.Window(self.in_flight)
        self._bundle_started: float | None = None

    async def _guarded(self, element: Any) -> tuple[Any, Handled | BaseException]:
        try:
            outcome: Handled | BaseException = await self.handle(element)
        except Exception as exc:
            outcome = exc
        return element, outcome

    def process(self, batch: Iterable[Any]) -> Iterator[Any]:
        window = self._window
        if self._bundle_started is None:
            self._bundle_started = time.monotonic()
            self._progress.start()
        for element in batch:
            while window.full():
                yield from self._emit(window.finished(block=True))
            window.submit(self._guarded(element))
        yield from self._emit(window.finished())

    def finish_bundle(self) -> Iterator[Any]:
        inputs_done[self.stage] = time.monotonic()
        if len(self._window):
            self._progress.note(f"all started, {len(self._window)} in flight")
        for output in self._emit(self._window.drain()):
            yield _windowed(output)
        if self._bundle_started is not None:
            spent = time.monotonic() - self._bundle_started
            Metrics.counter("time_ms", self.stage).inc(int(spent * 1000))

    def _emit(self, futures: Iterable[concurrent.futures.Future[Any]]) -> Iterator[Any]:
        """The outputs of finished elements, counting their tokens and reporting progress."""
        for future in futures:
            element, outcome = future.result()
            if isinstance(outcome, BaseException):
                count_tokens(getattr(outcome, "usage", None) or {})
                failure = self.failure(element, outcome)
                Metrics.counter(self.stage, "failures").inc()
                self._progress.report(f"failed: {failure.error_type}")
                yield beam.pvalue.TaggedOutput(FAILURES, failure)
                continue
            outputs, usage = outcome
            tokens = count_tokens(usage)
            yield from outputs
            self._progress.report(self.note(outputs), tokens)


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
