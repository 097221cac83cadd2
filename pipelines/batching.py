"""The DoFn shape every model-driven stage shares: elements in, concurrent coroutines, results out.

A stage keeps a rolling window of elements in flight on the process's loop, against one shared
client per model: a new element starts as soon as any other finishes, across batches, so the
engine always has work and no batch waits for its slowest member (a batch barrier idles the
engine). Results are emitted as each element finishes; an element that cannot be processed
becomes a Failure instead of failing the bundle.

With a `StageControl` (set by the run pipeline) a stage also checkpoints what finished, skips
inputs a checkpoint already holds, and stops the run when its failure rate passes the brake or
a stop is requested (Ctrl-C): it starts nothing new, finishes or abandons what is in flight,
writes what finished, and raises `RunStopped`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
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
from pipelines.progress import Progress
from pipelines.resume import CheckpointWriter, StageControl
from schemas.records import Failure, TokenCount
from simulators.llm.errors import ModelUnavailable

FAILURES = "failures"
DEFAULT_IN_FLIGHT = 512
Handled = tuple[list[Any], dict[str, TokenCount]]

inputs_done: dict[str, float] = {}
"""Per stage, when a bundle last started its final element (`time.monotonic`): from then on only
the elements already in flight are left, so the engine's load can only fall. Benchmarks read it
to tell the steady state from the drain."""


class RunStopped(RuntimeError):
    """The run stopped before its end: interrupted, or too many failures. What finished is in
    the checkpoint; the same command resumes."""

    def __init__(self, reason: str, exit_code: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


class StopSignal:
    """A process-wide request to stop: set by the Ctrl-C handler or a stage's failure brake."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.reason: str | None = None
            self.exit_code = 1
            self.abandon = False
            """Cancel in-flight elements instead of letting them finish (a second Ctrl-C)."""

    def request(self, reason: str, exit_code: int = 1) -> bool:
        """Ask every stage to stop; True if this is the first request."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason, self.exit_code = reason, exit_code
            return True

    @property
    def requested(self) -> bool:
        return self.reason is not None


STOP = StopSignal()
POLL_S = 0.25
"""How often a waiting stage looks at the stop signal."""


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


@contextlib.contextmanager
def usage_kept(usage: dict[str, TokenCount]) -> Iterator[dict[str, TokenCount]]:
    """Hand `usage` on with any error raised inside, so a failed element's tokens are counted.

    A handler owns its usage record from the start; when it fails after some requests, the
    tokens those requests spent still reach the manifest (`_emit` reads `error.usage`).
    """
    try:
        yield usage
    except Exception as exc:
        if not getattr(exc, "usage", None):
            exc.usage = usage  # type: ignore[attr-defined]
        raise


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

    def checkpoint_key(self, element: Any) -> str | None:
        """The key under which a finished element is checkpointed; None: not checkpointed."""
        return None

    def encode(self, element: Any, output: Any) -> tuple[Any, str]:
        """(record to checkpoint, id of the record it was made from) for one output; stages
        that checkpoint implement it with `decode` and `attach` (`pipelines.resume.Codec`)."""
        raise NotImplementedError(f"{self.stage} does not checkpoint")

    def also(self, element: Any, outputs: list[Any]) -> list[Any]:
        """Further outputs made from a finished element, not checkpointed (e.g. the pair the
        next stage needs, so it runs fused with this one instead of after a join)."""
        return []

    control: StageControl | None = None
    """Checkpointing, skipping and the failure brake; set by the run pipeline, else off."""

    def setup(self) -> None:
        skipped = len(self.control.skip) if self.control else 0
        total = None if self.total is None else max(0, self.total - skipped)
        self._progress = Progress(self.stage, total)
        if skipped:
            self._progress.note(f"reusing {skipped} finished in the checkpoint")
        self._writer = CheckpointWriter(self.control) if self.control else None
        self._finished = 0
        self._failed = 0

    def start_bundle(self) -> None:
        self._window = runtime.Window(self.in_flight)
        self._bundle_started: float | None = None

    async def _guarded(self, element: Any) -> tuple[Any, Handled | BaseException]:
        try:
            outcome: Handled | BaseException = await self.handle(element)
        except Exception as exc:
            outcome = exc
        return element, outcome

    def _skip(self, element: Any) -> bool:
        return self.control is not None and self.checkpoint_key(element) in self.control.skip

    def process(self, batch: Iterable[Any]) -> Iterator[Any]:
        window = self._window
        if self._bundle_started is None:
            self._bundle_started = time.monotonic()
            self._progress.start()
        for element in batch:
            if STOP.requested:
                break
            if self._skip(element):
                continue
            while window.full() and not STOP.requested:
                yield from self._emit(window.finished(block=True, timeout=POLL_S))
            if STOP.requested:
                break
            window.submit(self._guarded(element))
        yield from self._emit(window.finished())
        if STOP.requested:
            yield from self._stop()

    def finish_bundle(self) -> Iterator[Any]:
        inputs_done[self.stage] = time.monotonic()
        if len(self._window):
            self._progress.note(f"all started, {len(self._window)} in flight")
        for output in self._drain():
            yield _windowed(output)
        if self._writer is not None:
            self._writer.flush()
        if STOP.requested:
            self._raise_stop()
        if self._bundle_started is not None:
            spent = time.monotonic() - self._bundle_started
            Metrics.counter("time_ms", self.stage).inc(int(spent * 1000))

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.flush()

    def _drain(self) -> Iterator[Any]:
        """Every in-flight element's outputs; cancels them once a stop says to abandon them."""
        window = self._window
        cancelled = False
        while len(window):
            if STOP.abandon and not cancelled:
                self._progress.note(f"abandoning {len(window)} in flight")
                window.cancel()
                cancelled = True
            yield from self._emit(window.finished(block=True, timeout=POLL_S))

    def _stop(self) -> Iterator[Any]:
        """Finish (or abandon) what is in flight, write it, and stop the run."""
        if len(self._window):
            self._progress.note(f"stopping: finishing {len(self._window)} in flight")
        yield from self._drain()
        if self._writer is not None:
            self._writer.flush()
        self._raise_stop()

    def _raise_stop(self) -> None:
        raise RunStopped(STOP.reason or "stopped", STOP.exit_code)

    def _emit(self, futures: Iterable[concurrent.futures.Future[Any]]) -> Iterator[Any]:
        """The outputs of finished elements, counting their tokens and reporting progress."""
        for future in futures:
            if future.cancelled():
                continue
            element, outcome = future.result()
            self._finished += 1
            if isinstance(outcome, BaseException):
                count_tokens(getattr(outcome, "usage", None) or {})
                failure = self.failure(element, outcome)
                Metrics.counter(self.stage, "failures").inc()
                self._progress.fail(failure.error_type, failure.error, failure.input_id)
                self._failed += 1
                self._brake()
                self._stop_if_unavailable(outcome)
                yield beam.pvalue.TaggedOutput(FAILURES, failure)
                continue
            outputs, usage = outcome
            tokens = count_tokens(usage)
            if self._writer is not None:
                key = self.checkpoint_key(element)
                if key is not None:
                    self._writer.add(key, [self.encode(element, o) for o in outputs])
            yield from outputs
            yield from self.also(element, outputs)
            self._progress.report(self.note(outputs), tokens, self.checkpoint_key(element) or "")

    def _stop_if_unavailable(self, error: BaseException) -> None:
        """A model whose server or engine stayed down past its bound fails every element the
        same way: stop the run (what finished is kept) instead of dead-lettering the rest."""
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, ModelUnavailable):
            cause = cause.__cause__ or cause.__context__
        if cause is not None and STOP.request(f"{self.stage}: {cause}"):
            self._progress.note("stopping the run: the model is unavailable")

    def _brake(self) -> None:
        """Stop the run when failures pass the configured share of finished elements."""
        control = self.control
        if control is None or self._finished < control.failure_rate_after:
            return
        rate = self._failed / self._finished
        if rate > control.max_failure_rate and STOP.request(
            f"{self.stage}: {self._failed} of {self._finished} failed ({rate:.0%}), above "
            f"control.max_failure_rate {control.max_failure_rate:.0%}; look at the errors, fix "
            "the cause (server, model, specs) and rerun the same command to resume"
        ):
            self._progress.note(f"stopping the run: failure rate {rate:.0%}")


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
