"""One asyncio loop per worker process, where every model client and episode lives.

Beam calls DoFns synchronously; episodes are coroutines. A single background loop thread owns the
model clients (an in-process vLLM engine must be driven from one loop), and DoFns hand it work and
collect results as they finish, so many episodes share one engine at once.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from simulators.llm import registry
from simulators.llm.base import ChatModel
from simulators.llm.registry import ModelConfig

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


def as_completed(
    coros: list[Coroutine[Any, Any, T]],
) -> Iterator[concurrent.futures.Future[T]]:
    """Start all `coros` at once and yield their futures in the order they finish."""
    futures = [submit(c) for c in coros]
    yield from concurrent.futures.as_completed(futures)


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
