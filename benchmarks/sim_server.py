"""A simulated OpenAI-compatible server with a known capacity, for throughput benchmarks and tests.

It behaves like an inference engine at its batch limit: `slots` requests generate at once, each
holds its slot for `tokens` generated tokens x `token_s` seconds (fewer when the request's
`max_tokens` is lower), and requests beyond `slots` queue. Its ideal throughput for a workload is
therefore `slots / mean service time`, reached only when a client keeps every slot busy.

Answers are valid for the request, so a real episode loop proceeds: with a `response_format`
JSON schema the answer is a schema-valid value (agent tool calls or replies, tool results, user
messages with their done flag); with native `tools` it is a tool call; otherwise plain text.

Faults are injected at set rates and counted: 429 with Retry-After, 503, connections dropped
mid-answer, and slow answers (a slot held `slow_factor` times longer).

    python -m benchmarks.sim_server --slots 256 --token-ms 20 --tokens 50 [--p429 0.05 ...]

prints `listening on http://127.0.0.1:PORT/v1` and serves until killed. `GET /stats` returns what
it served; `POST /reset` clears the counts. `start_server` runs it in a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `simulators` importable
    sys.path.insert(0, str(ROOT))


@dataclass
class Capacity:
    """What the simulated engine can do, and how often it misbehaves."""

    slots: int = 256
    token_s: float = 0.02
    tokens: int = 50
    p429: float = 0.0
    p5xx: float = 0.0
    pdrop: float = 0.0
    pslow: float = 0.0
    slow_factor: float = 10.0
    retry_after_s: float = 1.0
    seed: int = 0

    def service_s(self, max_tokens: int | None) -> float:
        return self.generated(max_tokens) * self.token_s

    def generated(self, max_tokens: int | None) -> int:
        return min(self.tokens, max_tokens) if max_tokens else self.tokens

    def ideal_rps(self, mean_service_s: float) -> float:
        """Requests per second with every slot always busy."""
        return self.slots / mean_service_s if mean_service_s > 0 else 0.0


@dataclass
class Stats:
    """What the server saw; `service_s` sums the nominal slot time of answered requests."""

    received: int = 0
    answered: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    dropped: int = 0
    slow: int = 0
    service_s: float = 0.0
    busy_slot_s: float = 0.0
    max_busy: int = 0
    max_queued: int = 0
    max_open: int = 0
    """Most requests open at once, whatever their answer: what a client's bound caps."""
    first_arrival: float | None = None
    last_answer: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    answered_at: list[float] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)
    left_at: list[float] = field(default_factory=list)
    """When each request arrived and when it ended, whatever its answer: requests in flight."""
    peers: set[Any] = field(default_factory=set)

    def summary(self, capacity: Capacity) -> dict[str, Any]:
        data = asdict(self)
        data.pop("answered_at")
        data.pop("arrived_at")
        data.pop("left_at")
        data["connections"] = len(data.pop("peers"))
        span = (
            self.last_answer - self.first_arrival
            if self.first_arrival is not None and self.last_answer is not None
            else 0.0
        )
        mean = self.service_s / self.answered if self.answered else 0.0
        data.update(
            span_s=span,
            mean_service_s=mean,
            achieved_rps=self.answered / span if span > 0 else 0.0,
            ideal_rps=capacity.ideal_rps(mean),
            utilization=self.busy_slot_s / (capacity.slots * span) if span > 0 else 0.0,
        )
        return data


class SimServer:
    """The aiohttp application and its counters."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self.stats = Stats()
        self.rng = random.Random(capacity.seed)
        self.busy = 0
        self.queued = 0
        self.open = 0
        self._slots: asyncio.Semaphore | None = None

    def app(self) -> Any:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/reset", self.reset)
        return app

    async def get_stats(self, request: Any) -> Any:
        from aiohttp import web

        summary = self.stats.summary(self.capacity)
        if request.query.get("times"):
            summary["answered_at"] = self.stats.answered_at
            summary["arrived_at"] = self.stats.arrived_at
            summary["left_at"] = self.stats.left_at
        return web.json_response(summary)

    async def reset(self, request: Any) -> Any:
        from aiohttp import web

        self.stats = Stats()
        return web.json_response({"ok": True})

    async def chat(self, request: Any) -> Any:
        self.open += 1
        self.stats.max_open = max(self.stats.max_open, self.open)
        try:
            return await self._chat(request)
        finally:
            self.open -= 1
            self.stats.left_at.append(time.monotonic())

    async def _chat(self, request: Any) -> Any:
        from aiohttp import web

        stats, capacity = self.stats, self.capacity
        now = time.monotonic()
        if stats.first_arrival is None:
            stats.first_arrival = now
        stats.received += 1
        stats.arrived_at.append(now)
        if request.transport is not None:
            stats.peers.add(request.transport.get_extra_info("peername"))
        body = await request.json()
        draw = self.rng.random()
        if draw < capacity.p429:
            stats.rate_limited += 1
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                status=429,
                headers={"Retry-After": f"{capacity.retry_after_s:g}"},
            )
        draw -= capacity.p429
        if draw < capacity.p5xx:
            stats.server_errors += 1
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        draw -= capacity.p5xx
        drop = draw < capacity.pdrop
        draw -= capacity.pdrop
        slow = not drop and draw < capacity.pslow
        service = capacity.service_s(body.get("max_tokens"))
        if slow:
            service *= capacity.slow_factor
        if self._slots is None:
            self._slots = asyncio.Semaphore(capacity.slots)
        self.queued += 1
        if self.busy >= capacity.slots:
            stats.max_queued = max(stats.max_queued, self.queued)
        async with self._slots:
            self.queued -= 1
            self.busy += 1
            stats.max_busy = max(stats.max_busy, self.busy)
            started = time.monotonic()
            try:
                await asyncio.sleep(service / 2 if drop else service)
            finally:
                self.busy -= 1
                stats.busy_slot_s += time.monotonic() - started
        if drop:
            stats.dropped += 1
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("dropped on purpose")
        stats.slow += slow
        answer = self.answer(body)
        stats.answered += 1
        stats.service_s += service
        stats.prompt_tokens += answer["usage"]["prompt_tokens"]
        stats.completion_tokens += answer["usage"]["completion_tokens"]
        stats.last_answer = time.monotonic()
        stats.answered_at.append(stats.last_answer)
        return web.json_response(answer)

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat completion valid for `body`."""
        from simulators.llm.scripted import schema_instance

        message: dict[str, Any] = {"role": "assistant", "content": "Sure, happy to help."}
        finish = "stop"
        response_format = body.get("response_format") or {}
        if body.get("tools"):
            tool = self.rng.choice(body["tools"])["function"]
            arguments = schema_instance(tool.get("parameters") or {"type": "object"}, self.rng)
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{self.rng.getrandbits(48):012x}",
                        "type": "function",
                        "function": {"name": tool["name"], "arguments": json.dumps(arguments)},
                    }
                ],
            }
            finish = "tool_calls"
        elif response_format.get("type") == "json_schema":
            schema = response_format["json_schema"]["schema"]
            message["content"] = json.dumps(schema_instance(schema, self.rng))
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
        generated = self.capacity.generated(body.get("max_tokens"))
        return {
            "id": f"chatcmpl-{self.rng.getrandbits(64):016x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "sim"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_chars // 4 + 1,
                "completion_tokens": generated,
                "total_tokens": prompt_chars // 4 + 1 + generated,
            },
        }


async def serve(capacity: Capacity, port: int = 0) -> None:
    import logging

    from aiohttp import web

    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # dropped on purpose

    server = SimServer(capacity)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(f"listening on http://127.0.0.1:{runner.addresses[0][1]}/v1", flush=True)
    await asyncio.Event().wait()


class Running:
    """A server in a child process: its base URL and its counters."""

    def __init__(self, process: subprocess.Popen[str], base_url: str) -> None:
        self.process = process
        self.base_url = base_url

    def stats(self, times: bool = False) -> dict[str, Any]:
        import httpx

        root = self.base_url.removesuffix("/v1")
        params = {"times": "1"} if times else {}
        return httpx.get(f"{root}/stats", params=params, timeout=30).json()

    def reset(self) -> None:
        import httpx

        httpx.post(f"{self.base_url.removesuffix('/v1')}/reset", timeout=30)


@contextmanager
def start_server(capacity: Capacity) -> Iterator[Running]:
    """Run the simulated server in its own process (its CPU is not the client's) on a free port."""
    args = [sys.executable, "-m", "benchmarks.sim_server"]
    for name, value in asdict(capacity).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"simulated server did not start: {line!r}")
        yield Running(process, line.split()[-1])
    finally:
        process.terminate()
        process.wait(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Capacity()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--token-ms", type=float, default=None, help="token time in ms")
    parser.add_argument("--port", type=int, default=0)
    args = vars(parser.parse_args(argv))
    port = args.pop("port")
    token_ms = args.pop("token_ms")
    if token_ms is not None:
        args["token_s"] = token_ms / 1000
    capacity = Capacity(**args)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(capacity, port))
    else:
        uvloop.run(serve(capacity, port))


if __name__ == "__main__":
    main()
