"""One asyncio loop per worker process, where every model client and episode lives.

Beam calls DoFns synchronously; episodes are coroutines. A single background loop thread owns the
model clients (an in-process vLLM engine must be driven from one loop), and DoFns hand it work and
collect results as they finish, so many episodes share one engine at once.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import queue
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from simulators.llm import registry
from simulators.llm.base import ChatModel
from simulators.llm.config import ModelConfig

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            new_loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=new_loop.run_forever, name="agentmill-loop", daemon=True
            )
            thread.start()
            _loop = new_loop
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and wait for it."""
    return submit(coro).result()


class Window:
    """A rolling window of coroutines on the background loop: at most `limit` at once.

    A new coroutine starts as soon as any running one ends, so there is no batch barrier: one slow
    episode holds one slot, not its whole batch. Finished futures are handed back through a
    queue, in the order they finish, to the thread that submitted them (a DoFn thread, where Beam
    counts metrics). A queue rather than `concurrent.futures.wait`, whose cost grows with the
    number of pending futures on every call.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._finished: queue.SimpleQueue[concurrent.futures.Future[Any]] = queue.SimpleQueue()

    def __len__(self) -> int:
        return len(self._running)

    def full(self) -> bool:
        return len(self._running) >= self.limit

    def submit(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start `coro` now; the caller keeps the window under its limit (see `full`)."""
        future = submit(coro)
        self._running.add(future)
        future.add_done_callback(self._finished.put)

    def finished(
        self, block: bool = False, timeout: float | None = None
    ) -> Iterator[concurrent.futures.Future[Any]]:
        """Futures that have finished; with `block`, wait for at least one when any is running
        (up to `timeout` seconds)."""
        while self._running:
            try:
                future = self._finished.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            self._running.discard(future)
            block = False
            yield future

    def cancel(self) -> None:
        """Cancel every running coroutine; `drain` then yields them as cancelled."""
        for future in list(self._running):
            future.cancel()

    def drain(self) -> Iterator[concurrent.futures.Future[Any]]:
        """Every remaining future, in the order they finish."""
        while self._running:
            yield from self.finished(block=True)


def model(config: ModelConfig) -> ChatModel:
    """The shared client for `config` in this process."""
    return registry.get_model(config)


def close_models() -> None:
    """Shut down engines and connections; called at the end of a run and at exit."""
    clients = registry.clear()
    if not clients:
        return

    async def _close() -> None:
        for client in clients:
            try:
                await client.close()
            except Exception:
                pass

    if _loop is not None and not _loop.is_closed() and _loop.is_running():
        submit(_close()).result(timeout=120)


atexit.register(close_models)
