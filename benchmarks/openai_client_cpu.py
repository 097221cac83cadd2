"""Client-side CPU per request: agentmill's OpenAI backend against the stock openai SDK.

An episode worker keeps hundreds of conversations in flight, so its own CPU per model request
bounds throughput long before a GPU server does. The fake server runs in a separate process so
`time.process_time` here counts only the client. Budget: at most 3 ms per request for ours.

    python benchmarks/openai_client_cpu.py [--requests 2000] [--concurrency 64] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Any

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
ANSWER = json.dumps({"city": "Lyon", "days": 3})
RESPONSE = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132},
    }
).encode()
SYSTEM = "You are a helpful travel agent. " * 40  # a realistic ~1.3 kB system prompt


def serve(port_pipe: Any) -> None:
    """A fake OpenAI-compatible server answering a fixed completion as fast as it can."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=RESPONSE, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port_pipe.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


async def measure(
    call: Callable[[], Awaitable[Any]], requests: int, concurrency: int, warmup: int
) -> float:
    """Client CPU milliseconds per request over `requests` calls, `concurrency` at a time."""

    async def batch(count: int) -> None:
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await call()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    await batch(warmup)  # connections opened, imports and caches warm
    start = time.process_time()
    await batch(requests)
    return (time.process_time() - start) * 1000 / requests


async def run_all(base_url: str, requests: int, concurrency: int) -> dict[str, float]:
    from openai import AsyncOpenAI

    from schemas.records import Message
    from simulators.llm.base import Sampling
    from simulators.llm.config import ModelConfig
    from simulators.llm.openai_backend import OpenAIChatModel

    warmup = max(concurrency * 2, 200)
    messages = [
        Message(role="system", content=SYSTEM),
        Message(role="user", content="Plan three days in Lyon for two people."),
    ]
    plain = [m.model_dump(exclude_none=True) for m in messages]
    sampling = Sampling(temperature=0.7, top_p=0.95, max_tokens=128, seed=1)
    config = ModelConfig(
        backend="openai",
        model="bench",
        base_url=base_url,
        api_key="sk-bench",
        max_in_flight=concurrency,
    )
    ours = OpenAIChatModel(config)
    import httpx

    # The same backend forced onto httpx (what it used before `simulators.llm.http`).
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    over_httpx = OpenAIChatModel(config, transport=httpx.AsyncHTTPTransport(limits=limits))
    sdk = AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
    }

    async def ours_complete() -> None:
        completion = await ours.complete(messages, response_schema=SCHEMA, sampling=sampling)
        assert completion.parsed["city"] == "Lyon"

    async def ours_generate() -> None:
        raw = await ours.generate(plain, SCHEMA, sampling)
        assert raw.text == ANSWER

    async def httpx_generate() -> None:
        raw = await over_httpx.generate(plain, SCHEMA, sampling)
        assert raw.text == ANSWER

    async def sdk_create() -> None:
        result = await sdk.chat.completions.create(
            model="bench",
            messages=plain,  # type: ignore[arg-type]
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            response_format=response_format,
        )
        assert json.loads(result.choices[0].message.content or "")["city"] == "Lyon"

    results: dict[str, float] = {}
    try:
        for name, call in (
            ("ours: complete() with response schema", ours_complete),
            ("ours: generate() HTTP layer only", ours_generate),
            ("ours: generate() over httpx", httpx_generate),
            ("openai SDK: chat.completions.create", sdk_create),
        ):
            results[name] = await measure(call, requests, concurrency, warmup)
    finally:
        await ours.close()
        await over_httpx.close()
        await sdk.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    server = context.Process(target=serve, args=(send,), daemon=True)
    server.start()
    try:
        port = receive.recv()
        base_url = f"http://127.0.0.1:{port}/v1"
        coro = run_all(base_url, args.requests, args.concurrency)
        if args.uvloop:
            import uvloop

            results = uvloop.run(coro)
        else:
            results = asyncio.run(coro)
    finally:
        server.terminate()
        server.join(10)

    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"client CPU per request, {args.requests} requests, {args.concurrency} in flight, {loop}")
    for name, ms in results.items():
        print(f"  {name:<42} {ms:6.3f} ms")
    ours_ms = results["ours: complete() with response schema"]
    sdk_ms = results["openai SDK: chat.completions.create"]
    print(f"  openai SDK / ours (complete)               {sdk_ms / ours_ms:6.2f}x")
    print(f"  budget 3 ms: {'met' if ours_ms <= 3.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
