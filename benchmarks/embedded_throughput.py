"""Tokens per second on the embedded model (vLLM's CPU build): episodes in flight vs one at a time.

Real episodes (`simulators.episode.run_episode`: user, agent and tool simulator on the embedded
SmolLM2 through `VLLMChatModel`, constrained JSON) run on the pipeline's background loop, kept in
flight by the same rolling window the episode stage uses (`pipelines.runtime.Window`). Each phase
runs for a fixed wall budget after a warm-up (engine start, grammar compilation and the first
prefills are not measured) and counts, inside the budget, every token the engine generated (from
vLLM's per-step statistics) and, beside it, the tokens of the answers that ended.

    python -m benchmarks.embedded_throughput [--seconds 60] [--in-flight 64] [--log-stats]

About five minutes: ~30 s engine start, 75 s one at a time, 180 s with episodes in flight.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))


def counting(model: Any, log: list[tuple[float, int, int]]) -> None:
    """Append every generation's (time, completion tokens, prompt tokens) to `log`, including
    answers later rejected (truncated, off-schema): they cost the engine the same."""
    generate = model.generate

    async def counted(*args: Any, **kwargs: Any) -> Any:
        raw = await generate(*args, **kwargs)
        log.append((time.monotonic(), raw.completion_tokens, raw.prompt_tokens))
        return raw

    model.generate = counted


def engine_tap(model: Any) -> list[tuple[float, int]]:
    """(time, tokens) for every engine step, from vLLM's own per-iteration statistics: tokens
    count when generated, where a finished answer counts them only when it ends (an answer
    takes a minute when 64 share one core, too long beside a measured window)."""
    steps: list[tuple[float, int]] = []
    manager = model._engine.logger_manager
    record = manager.record

    def tapped(*args: Any, **kwargs: Any) -> Any:
        stats = kwargs.get("iteration_stats", args[1] if len(args) > 1 else None)
        if stats is not None:
            steps.append((time.monotonic(), stats.num_generation_tokens))
        return record(*args, **kwargs)

    manager.record = tapped
    return steps


def phase(
    pairs: list[Any],
    model: Any,
    steps: list[tuple[float, int]],
    in_flight: int,
    warmup_s: float,
    seconds: float,
) -> dict[str, float]:
    """Episodes `in_flight` at a time until the budget ends; tokens/s over the measured part."""
    from pipelines import runtime
    from pipelines.shared import stable_seed
    from simulators.episode import EpisodeConfig, RoleClients, run_episode
    from simulators.persona import make_persona

    log: list[tuple[float, int, int]] = []
    counting(model, log)
    models = RoleClients(user=model, agent=model, tool=model)
    config = EpisodeConfig()
    window = runtime.Window(in_flight)
    started = time.monotonic()
    begin, end = started + warmup_s, started + warmup_s + seconds
    episodes = failed = 0
    index = 0
    last_note = started
    while time.monotonic() < end:
        while not window.full():
            task, agent = pairs[index % len(pairs)]
            seed = stable_seed(0, "bench", index)
            persona = make_persona(f"bench:{index}")
            window.submit(run_episode(task, agent, persona, models, config, seed))
            index += 1
        for future in window.finished(block=True, timeout=1.0):
            episodes += 1
            failed += future.exception() is not None
        if time.monotonic() - last_note > 10:
            last_note = time.monotonic()
            done = sum(n for at, n, _ in log if at >= begin)
            print(
                f"  [{last_note - started:4.0f}s] {in_flight} in flight: {episodes} episodes, "
                f"{len(log)} requests, {done} tokens since warm-up",
                file=sys.stderr,
                flush=True,
            )
    # Episodes still running when the budget ends are cancelled (vLLM aborts their requests).
    window.cancel()
    for future in window.drain():
        if not future.cancelled():
            future.exception()
    del model.generate  # back to the class's method
    tokens = sum(n for at, n, _ in log if begin <= at <= end)
    prompt = sum(n for at, _, n in log if begin <= at <= end)
    requests = sum(1 for at, _, _ in log if begin <= at <= end)
    generated = sum(n for at, n in steps if begin <= at <= end)
    return {
        "generated_per_s": generated / seconds,
        "prompt_per_request": prompt / max(requests, 1),
        "completion_per_request": tokens / max(requests, 1),
        "tokens_per_s": tokens / seconds,
        "requests_per_s": requests / seconds,
        "requests": requests,
        "tokens": tokens,
        "episodes": episodes,
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured, one at a time")
    parser.add_argument("--warmup", type=float, default=15.0, help="unmeasured, one at a time")
    parser.add_argument("--concurrent-seconds", type=float, default=120.0, help="measured")
    parser.add_argument("--concurrent-warmup", type=float, default=60.0, help="unmeasured")
    parser.add_argument("--in-flight", type=int, default=64, help="episodes in flight")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="engine batch limit")
    parser.add_argument("--agents", type=int, default=16, help="distinct agents (tool sets)")
    parser.add_argument("--log-stats", action="store_true", help="vLLM's own throughput log")
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from benchmarks.throughput import make_inputs
    from pipelines import runtime
    from schemas import arrow
    from schemas.records import AgentSpec, Task
    from simulators.llm.config import ModelConfig

    with tempfile.TemporaryDirectory(prefix="agentmill-embedded-") as tmp:
        inputs = make_inputs(Path(tmp), 256, agents=args.agents)
        agents = {
            r["id"]: arrow.from_row(AgentSpec, r)
            for r in pq.read_table(inputs / "agents.parquet").to_pylist()
        }
        rows = pq.read_table(inputs / "tasks.parquet").to_pylist()
        tasks = [arrow.from_row(Task, r) for r in rows]
    pairs = [(task, agents[task.agent_id]) for task in tasks]
    # Statistics on: `engine_tap` reads them; they are printed only with --log-stats.
    config = ModelConfig(max_num_seqs=args.max_num_seqs, engine_args={"disable_log_stats": False})
    model = runtime.model(config)
    print(f"embedded model {config.display_name()}, max_num_seqs {config.max_num_seqs}")
    started = time.monotonic()
    runtime.run(_first_request(model))
    print(f"engine up and warm in {time.monotonic() - started:.0f} s")
    steps = engine_tap(model)
    if args.log_stats:
        runtime.submit(_log_stats(model))
    try:
        sequential = phase(pairs, model, steps, 1, args.warmup, args.seconds)
        concurrent = phase(
            pairs, model, steps, args.in_flight, args.concurrent_warmup, args.concurrent_seconds
        )
    finally:
        runtime.close_models()
    print(
        f"{'':<24} {'generated':>9} {'answers':>8} {'answers':>8} {'episodes':>8} "
        f"{'failed':>6} {'prompt':>7} {'tokens':>7}"
    )
    print(
        f"{'':<24} {'tokens/s':>9} {'tokens/s':>8} {'/s':>8} {'ended':>8} "
        f"{'':>6} {'/answer':>7} {'/answer':>7}"
    )
    for label, row in (
        ("one episode at a time", sequential),
        (f"{args.in_flight} episodes in flight", concurrent),
    ):
        print(
            f"{label:<24} {row['generated_per_s']:>9.1f} {row['tokens_per_s']:>8.1f} "
            f"{row['requests_per_s']:>8.2f} {row['episodes']:>8} {row['failed']:>6} "
            f"{row['prompt_per_request']:>7.0f} {row['completion_per_request']:>7.0f}"
        )
    ratio = concurrent["generated_per_s"] / max(sequential["generated_per_s"], 1e-9)
    print(
        f"concurrent / sequential generated tokens per second: {ratio:.1f}x (measured "
        f"{args.seconds:g} s and {args.concurrent_seconds:g} s after {args.warmup:g} s and "
        f"{args.concurrent_warmup:g} s of warm-up; target >= 4x: "
        f"{'met' if ratio >= 4 else 'MISSED'})"
    )
    print(
        "  generated: every token the engine produced for these episodes, counted per step; "
        "answers: tokens of the answers that ended inside the window (long answers still "
        "running at its end are not counted, so this lags under concurrency)"
    )


async def _log_stats(model: Any) -> None:
    """vLLM's own throughput lines (prompt and generation tokens/s, prefix cache hits)."""
    import asyncio

    while model._engine is not None:
        await asyncio.sleep(10)
        await model._engine.do_log_stats()


async def _first_request(model: Any) -> None:
    """Start the engine and compile a grammar before anything is timed."""
    from schemas.records import Message
    from simulators.llm.base import Sampling

    await model.complete(
        [Message(role="user", content="Say hello.")],
        response_schema={"type": "object", "properties": {"m": {"type": "string"}}},
        sampling=Sampling(max_tokens=16, seed=1),
    )


if __name__ == "__main__":
    main()
