"""What a run shows while it works: one board per process, per stage done, rate, tokens/s, ETA.

On a terminal the board is a live table (rich); anywhere else (a log file, a pipe, a Dataflow
worker) it prints one summary line per stage that moved, at most every `LINE_EVERY_S` seconds, and
a final line when a stage ends; each finished item goes to the `agentmill.progress` logger at
debug level only. Stages report through `Progress` (a thin handle the batching DoFn holds).

Rates and ETAs count from a stage's first finished item, not from its start: before that the
stage was waiting on an engine starting or on the previous stage, which says nothing about its
pace. Totals shrink when an earlier stage loses work (a failed agent takes its tasks, episodes and
judgements with it), so the judge counts to what reached it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

LINE_EVERY_S = 5.0
"""Non-terminal output: at most one summary line per stage this often."""
MIN_SPAN_S = 1.0
"""Rates need this much time between a stage's first and last finished item."""
ORDER = ("agents", "tasks", "episodes", "judge")
"""The model-driven stages, upstream first: a loss upstream lowers every later total."""
log = logging.getLogger("agentmill.progress")
_t0 = time.monotonic()


def duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"


@dataclass
class StageState:
    """One stage's counters in this process."""

    name: str
    total: int | None = None
    """What the stage was planned to get; `lost` of it never will (failed upstream)."""
    lost: int = 0
    done: int = 0
    failed: int = 0
    tokens: int = 0
    first_at: float | None = None
    """When the first item finished: rates count from here."""
    first_tokens: int = 0
    last_at: float | None = None
    finished: bool = False
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def expected(self) -> int | None:
        """The items that will reach this stage: planned minus lost upstream."""
        return None if self.total is None else max(self.done, self.total - self.lost)

    def rates(self, now: float) -> tuple[float | None, float | None, float | None]:
        """(items/s, tokens/s, ETA s) over the time since the first item finished."""
        if self.first_at is None or self.done < 2:
            return None, None, None
        spent = (self.last_at or now) - self.first_at
        if spent < MIN_SPAN_S:
            return None, None, None  # items that all finished at once have no pace to show
        per_s = (self.done - 1) / spent
        tokens_s = (self.tokens - self.first_tokens) / spent
        eta = None
        expected = self.expected
        if expected and self.done < expected and per_s > 0:
            eta = (expected - self.done) / per_s
        return per_s, tokens_s, eta

    def line(self, now: float) -> str:
        """The one-line summary a log file gets."""
        count = f"{self.done}/{self.expected}" if self.total else str(self.done)
        text = f"[{now - _t0:6.0f}s] {self.name:<9} {count}"
        if self.failed:
            text += f" ({self.failed} failed)"
        per_s, tokens_s, eta = self.rates(now)
        if per_s is not None:
            text += f" | {per_s:,.2f}/s, {tokens_s:,.0f} tok/s"
            if eta is not None:
                text += f", ETA {duration(eta)}"
        if self.finished:
            text += " | done"
        return text


class Board:
    """Every stage of this process, and how they are shown."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # the live view's first draw reads the board under it
        self.stages: dict[str, StageState] = {}
        self.fanout: dict[str, int] = {}
        """Items of the next stage one item of a stage makes (an agent makes tasks_per_agent)."""
        self.stream: TextIO | None = None
        """Where the board shows (default: stderr); a live table when it is a terminal."""
        self.also: TextIO | None = None
        """A log file that gets the summary lines while a terminal gets the live table."""
        self._view: _View | None = None
        self._log_view: _View | None = None

    # stages report -------------------------------------------------------------------------

    def stage(self, name: str, total: int | None) -> StageState:
        with self._lock:
            state = self.stages.get(name)
            if state is None:
                state = self.stages[name] = StageState(name, total)
            elif total is not None and state.total is None:
                state.total = total
        self._ensure_view()
        return state

    def finish_item(self, state: StageState, tokens: int, reason: str | None = None) -> None:
        """Count one finished item of `state`'s stage; `reason` when it failed."""
        now = time.monotonic()
        with self._lock:
            state.done += 1
            state.tokens += tokens
            state.last_at = now
            if state.first_at is None:
                state.first_at, state.first_tokens = now, state.tokens
            if reason is not None:
                state.failed += 1
                state.reasons[reason] += 1
                self._lose(state.name, self.fanout.get(state.name, 1))
            expected = state.expected
            if expected and state.done >= expected:
                state.finished = True
        if state.finished:
            for view in (self._view, self._log_view):
                if view is not None:
                    view.refresh(force=True)

    def _lose(self, stage: str, items: int) -> None:
        """Lower every later stage's total by the `items` a failure at `stage` never makes."""
        if stage not in ORDER:
            return
        for later in ORDER[ORDER.index(stage) + 1:]:
            state = self.stages.get(later)
            if state is None:
                state = self.stages[later] = StageState(later, None)
            state.lost += items
            expected = state.expected
            if expected is not None and state.done and state.done >= expected:
                state.finished = True

    def note(self, stage: str, text: str) -> None:
        """A one-off message (an engine starting, a stage reusing its checkpoint)."""
        line = f"[{time.monotonic() - _t0:6.0f}s] {stage:<9} {text}"
        if self._view is not None:
            self._view.message(line)
        else:
            print(line, file=self.stream or sys.stderr, flush=True)
        if self._log_view is not None:
            self._log_view.message(line)

    def reasons(self) -> list[tuple[str, str, int]]:
        """(stage, reason, count) over every stage, commonest first."""
        with self._lock:
            rows = [(s.name, r, n) for s in self.stages.values() for r, n in s.reasons.items()]
        return sorted(rows, key=lambda row: -row[2])

    # showing ---------------------------------------------------------------------------------

    def _ensure_view(self) -> None:
        if self._view is not None:
            return
        with self._lock:
            if self._view is None:
                stream = self.stream or sys.stderr
                live = getattr(stream, "isatty", lambda: False)()
                self._view = _LiveView(self, stream) if live else _LineView(self, stream)
                self._view.start()
                if live and self.also is not None:
                    self._log_view = _LineView(self, self.also)
                    self._log_view.start()

    def snapshot(self) -> list[StageState]:
        with self._lock:
            shown = [StageState(**{k: getattr(s, k) for k in StageState.__dataclass_fields__})
                     for s in self.stages.values() if s.total or s.done]
        rank = {name: i for i, name in enumerate(ORDER)}
        return sorted(shown, key=lambda s: rank.get(s.name, len(ORDER)))

    def close(self) -> None:
        """Show the last state and stop the display (the end of a run)."""
        for view in (self._view, self._log_view):
            if view is not None:
                view.stop()
        self._view = self._log_view = None

    def reset(self) -> None:
        self.close()
        with self._lock:
            self.stages.clear()
            self.fanout.clear()


class _View:
    def __init__(self, board: Board, stream: TextIO) -> None:
        self.board, self.stream = board, stream

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def refresh(self, force: bool = False) -> None: ...

    def message(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class _LineView(_View):
    """A log file's view: a line per stage that moved, at most every LINE_EVERY_S seconds."""

    def __init__(self, board: Board, stream: TextIO) -> None:
        super().__init__(board, stream)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agentmill-progress", daemon=True)
        self._print_lock = threading.Lock()
        self._printed: dict[str, tuple[int, bool]] = {}

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(LINE_EVERY_S):
            self.refresh()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._print_lock:
            for state in self.board.snapshot():
                key = (state.done, state.finished)
                last = self._printed.get(state.name, (0, False))
                if last == key or last[1] or state.done == 0:
                    continue
                self._printed[state.name] = key
                print(state.line(now), file=self.stream, flush=True)

    def stop(self) -> None:
        self._stop.set()
        self.refresh(force=True)


class _LiveView(_View):
    """A terminal's view: a table redrawn in place, four times a second."""

    def start(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=self.stream)
        # No redirection of sys.stdout/stderr through the table: library output written there
        # would land on the terminal instead of the log file.
        self.live = Live(self._table(), console=self.console, refresh_per_second=4,
                         get_renderable=self._table, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def _table(self) -> Any:
        from rich.table import Table

        now = time.monotonic()
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("stage", "done", "failed", "per s", "tok/s", "ETA"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for state in self.board.snapshot():
            per_s, tokens_s, eta = state.rates(now)
            table.add_row(
                state.name,
                f"{state.done}/{state.expected}" if state.total else str(state.done),
                f"[red]{state.failed}[/red]" if state.failed else "0",
                "…" if per_s is None else f"{per_s:,.2f}",
                "…" if tokens_s is None else f"{tokens_s:,.0f}",
                "done" if state.finished else ("…" if eta is None else duration(eta)),
            )
        return table

    def refresh(self, force: bool = False) -> None:
        if force:
            self.live.refresh()

    def message(self, line: str) -> None:
        self.live.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def stop(self) -> None:
        self.live.refresh()
        self.live.stop()


BOARD = Board()


class Progress:
    """A stage's handle on the board: what the batching DoFn calls as items finish."""

    def __init__(self, stage: str, total: int | None) -> None:
        self.stage = stage
        self.state = BOARD.stage(stage, total)

    def start(self) -> None:
        """Kept for the DoFn's bundle start; rates count from the first finished item."""

    def note(self, text: str) -> None:
        BOARD.note(self.stage, text)

    def report(self, note: str, tokens: int = 0, item: str = "") -> None:
        """One item finished well."""
        BOARD.finish_item(self.state, tokens)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s: %s (%d tokens)", self.stage, item, note, tokens)

    def fail(self, error_type: str, error: str, item: str = "") -> None:
        """One item failed: counted with its reason (type and the first line of the error)."""
        first = (error.splitlines() or [""])[0]
        BOARD.finish_item(self.state, 0, f"{error_type}: {first[:160]}")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s failed: %s: %s", self.stage, item, error_type, error)


# engines ----------------------------------------------------------------------------------------

STARTS_FILE = "engine_starts.json"
"""Seconds each model's engine took to start last time, under the agentmill cache."""
EMBEDDED_START_S = 40.0
"""SmolLM2-135M on vLLM's CPU build, measured on two cores (enforce_eager)."""


def _starts_path() -> Any:
    from simulators.llm.embedded import cache_root

    return cache_root() / STARTS_FILE


def start_estimate(model: str) -> float | None:
    """How long `model`'s engine took to start last time here; the embedded model's measured
    figure before its first start; None when nothing is known."""
    import json

    try:
        known = json.loads(_starts_path().read_text())
        return float(known[model])
    except (OSError, ValueError, KeyError, TypeError):
        from simulators.llm.config import EMBEDDED_MODEL

        return EMBEDDED_START_S if model.endswith(EMBEDDED_MODEL) else None


def remember_start(model: str, seconds: float) -> None:
    import json

    path = _starts_path()
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
        known[model] = round(seconds, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
    except (OSError, ValueError):
        pass  # an estimate is a nicety, never a reason to fail


class EngineNotes(logging.Handler):
    """Turns the model layer's engine events into board notes naming the roles they serve:
    `starting the engine for agent, judge (vllm:model, about 40 s)`."""

    def __init__(self, roles: dict[str, list[str]]) -> None:
        super().__init__(logging.INFO)
        self.roles = roles

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "engine_event", None)
        model = getattr(record, "engine_model", "?")
        roles = ", ".join(self.roles.get(getattr(record, "engine_key", ""), [])) or "a role"
        if event == "start":
            about = start_estimate(model)
            when = f", about {about:.0f} s" if about else ", start-up time not known yet"
            BOARD.note("engine", f"starting the engine for {roles} ({model}{when})")
        elif event == "ready":
            seconds = float(getattr(record, "seconds", 0.0))
            remember_start(model, seconds)
            BOARD.note("engine", f"engine for {roles} ready in {seconds:.0f} s")


def start_run(models: dict[str, Any], fanout: dict[str, int]) -> EngineNotes:
    """A fresh board for a run over `models` (role -> ModelConfig); returns the engine handler
    to pass to `end_run`."""
    BOARD.reset()
    BOARD.fanout.update(fanout)
    roles: dict[str, list[str]] = {}
    for role, config in models.items():
        roles.setdefault(config.key(), []).append(role)
    handler = EngineNotes(roles)
    engine = logging.getLogger("agentmill.engine")
    engine.setLevel(logging.INFO)
    engine.addHandler(handler)
    return handler


def end_run(handler: EngineNotes) -> None:
    BOARD.close()
    logging.getLogger("agentmill.engine").removeHandler(handler)
