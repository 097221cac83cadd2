"""RL environment benchmarks, on the simulated OpenAI-compatible server (benchmarks/sim_server.py).

1. serve-env: `agentmill serve-env` in its own process, the user and tool roles on the simulated
   server, `--sessions` concurrent clients each playing an episode over HTTP (tool calls, then a
   reply, until the user ends it or the step budget runs out). Prints the server process's CPU
   per step (its whole CPU, role-model clients included, over the steps served) and its memory
   per live session (RSS growth with every session reset and held, divided by their number).
2. rollout: `agentmill rollout` in process with the policy, the user and the tool simulator all on
   a simulated server with C slots and `--in-flight` C: requests per second achieved until the
   last rollout started, over the server's ideal (as benchmarks/throughput.py measures episodes),
   and over the whole run; `--tail-variants` adds in flight 2C and 4C side by side.

    python -m benchmarks.rl_env [--sessions 256] [--slots 256] [--rollouts 1280] [--tail-variants]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RETAIL = ROOT / "data" / "domains" / "retail"


def make_run(folder: Path, base_url: str, episode: dict[str, Any]) -> Path:
    """A run folder (manifest config + rl/ of the retail domain) with every role on `base_url`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.stages import rl_task
    from schemas.arrow import RL_SCHEMA, to_row
    from toolspecs.domain import load_domain

    domain = load_domain(RETAIL)
    rows = [to_row(rl_task((task, domain.agent))) for task in domain.tasks]
    (folder / "rl").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RL_SCHEMA), folder / "rl" / "part-0.parquet")
    model = {"backend": "openai", "model": "sim", "base_url": base_url, "max_in_flight": 1024}
    config = {
        "models": {role: model for role in ("user", "agent", "tool")},
        "episode": episode,
        "seed": 0,
    }
    (folder / "manifest.json").write_text(json.dumps({"config": config}))
    return folder


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


ACTIONS = [
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
     "function": {"name": "find_user_id_by_email",
                  "arguments": json.dumps({"email": "maya.okafor@example.com"})}}]},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c2", "type": "function",
     "function": {"name": "get_order_details",
                  "arguments": json.dumps({"order_id": "ORD-5001"})}}]},
    {"role": "assistant", "content": "Your order ORD-5001 is pending; shall I cancel it?"},
]


async def drive_sessions(base: str, tasks: list[str], sessions: int, port_pid: int) -> dict:
    import aiohttp

    limit = aiohttp.TCPConnector(limit=sessions + 8)
    async with aiohttp.ClientSession(base, connector=limit,
                                     timeout=aiohttp.ClientTimeout(total=600)) as client:
        async def post(path: str, body: dict) -> dict:
            async with client.post(path, json=body) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status} {answer}")
                return answer

        rss_before = rss_mib(port_pid)
        opened = await asyncio.gather(*(
            post("/reset", {"task_id": tasks[i % len(tasks)], "seed": i}) for i in range(sessions)
        ))
        rss_held = rss_mib(port_pid)
        cpu_start, wall_start = cpu_seconds(port_pid), time.monotonic()
        steps = 0

        async def play(session_id: str) -> None:
            nonlocal steps
            for turn in range(3):
                for action in ACTIONS:
                    result = await post("/step", {"session_id": session_id, "message": action,
                                                  "final": turn == 2})
                    steps += 1
                    if result["done"]:
                        return

        await asyncio.gather(*(play(o["session_id"]) for o in opened))
        cpu = cpu_seconds(port_pid) - cpu_start
        wall = time.monotonic() - wall_start
        rss_after = rss_mib(port_pid)
        await asyncio.gather(*(post("/close", {"session_id": o["session_id"]}) for o in opened))
    return {"steps": steps, "cpu": cpu, "wall": wall, "rss_before": rss_before,
            "rss_held": rss_held, "rss_after": rss_after}


def serve_env_benchmark(args: argparse.Namespace, work: Path) -> None:
    import httpx

    from benchmarks.sim_server import Capacity, start_server

    cap = Capacity(slots=args.slots, token_s=args.token_ms / 1000, tokens=args.tokens)
    with start_server(cap) as server:
        run_dir = make_run(work / "serve-run", server.base_url, {"failure_rate": 0.1})
        port = 8700 + os.getpid() % 200
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "serve-env", str(run_dir), "--port",
             str(port), "--max-sessions", str(args.sessions * 2)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    tasks = httpx.get(f"{base}/tasks", timeout=2).json()["tasks"]
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            else:
                raise RuntimeError("serve-env did not start")
            result = asyncio.run(drive_sessions(base, tasks, args.sessions, process.pid))
        finally:
            process.terminate()
            process.wait(10)
        stats = server.stats()
    per_step = result["cpu"] * 1000 / max(result["steps"], 1)
    per_session = (result["rss_held"] - result["rss_before"]) * 1024 / args.sessions
    print(f"\n== serve-env: {args.sessions} concurrent sessions, user and tool roles on a "
          f"simulated server ({cap.slots} slots, {cap.service_s(None):.2f} s per request)")
    print(f"steps {result['steps']} in {result['wall']:.1f} s, role-model requests "
          f"{stats['answered']}; server process CPU {result['cpu']:.2f} s")
    print(f"environment CPU per step (whole serve-env process, role clients included): "
          f"{per_step:.2f} ms; aim <= 2 ms: {'met' if per_step <= 2 else 'MISSED'}")
    print(f"memory: RSS {result['rss_before']:.0f} MiB idle, {result['rss_held']:.0f} MiB with "
          f"{args.sessions} sessions opened, {result['rss_after']:.0f} MiB after their episodes; "
          f"{per_session:.0f} KiB per live session (at reset), "
          f"{(result['rss_after'] - result['rss_before']) * 1024 / args.sessions:.0f} KiB "
          "after play")


def instant_roles(request: Any) -> Any:
    """User and tool answers at no model cost: what is left is the environment's own work."""
    import random

    from simulators.llm.scripted import schema_instance

    properties = (request.schema or {}).get("properties", {})
    if "done" in properties:
        return {"message": "ok, thanks", "done": False}
    if "message" in properties:
        return {"message": "Please cancel my order ORD-5001."}
    return schema_instance(request.schema or {"type": "string"}, random.Random(len(request.last)))


def serve_env_instant_benchmark(args: argparse.Namespace, work: Path) -> None:
    """serve-env's handlers and environments alone: roles answered in process at no model cost,
    HTTP through aiohttp's test client in the same process (its CPU counted too)."""
    from aiohttp.test_utils import TestClient, TestServer

    from pipelines.envs import RunEnvironments
    from pipelines.serve_env import EnvServer
    from simulators.llm import registry
    from simulators.llm.config import ModelConfig
    from simulators.llm.scripted import ScriptedModel

    registry.register(ModelConfig(backend="scripted", model="instant"),
                      ScriptedModel(instant_roles, keep=1))
    run_dir = make_run(work / "instant-run", "http://unused", {"failure_rate": 0.1})
    config = json.loads((run_dir / "manifest.json").read_text())
    instant = {"backend": "scripted", "model": "instant"}
    config["config"]["models"] = {"user": instant, "tool": instant, "agent": instant}
    (run_dir / "manifest.json").write_text(json.dumps(config))
    server = EnvServer(RunEnvironments.open(run_dir), max_sessions=args.sessions * 2)

    async def main() -> tuple[int, float]:
        async with TestClient(TestServer(server.app())) as client:
            tasks = (await (await client.get("/tasks")).json())["tasks"]
            cpu = time.process_time()
            steps = 0

            async def play(index: int) -> None:
                nonlocal steps
                response = await client.post(
                    "/reset", json={"task_id": tasks[index % len(tasks)], "seed": index}
                )
                session = (await response.json())["session_id"]
                for turn in range(3):
                    for action in ACTIONS:
                        answer = await (await client.post("/step", json={
                            "session_id": session, "message": action, "final": turn == 2,
                        })).json()
                        steps += 1
                        if answer["done"]:
                            return

            await asyncio.gather(*(play(i) for i in range(args.sessions)))
            return steps, time.process_time() - cpu

    steps, cpu = asyncio.run(main())
    per_step = cpu * 1000 / steps
    print(f"\n== serve-env, roles answered in process at no model cost: {args.sessions} sessions, "
          f"{steps} steps, {cpu:.2f} s CPU (server, environments and HTTP client in one process)")
    print(f"environment + HTTP CPU per step without model clients: {per_step:.2f} ms")


def rollout_benchmark(args: argparse.Namespace, work: Path) -> None:
    """In flight C; with `--tail-variants` also 2C and 4C side by side in the same run (more
    rollouts alive than the server has slots, so its queue stays full longer at the end)."""
    c = args.slots
    variants = [c, 2 * c, 4 * c] if args.tail_variants else [c]
    for in_flight in variants:
        rollout_once(args, work / f"in-flight-{in_flight}", in_flight)


def rollout_once(args: argparse.Namespace, work: Path, in_flight: int) -> None:
    from benchmarks.sim_server import Capacity, start_server
    from pipelines import runtime
    from pipelines.rollout import rollout

    cap = Capacity(slots=args.slots, token_s=args.token_ms / 1000, tokens=args.tokens)
    with start_server(cap) as server:
        run_dir = make_run(work / "rollout-run", server.base_url, {"failure_rate": 0.1})
        k = max(1, args.rollouts // 5)
        marks: dict[str, float] = {}
        cpu, wall = time.process_time(), time.monotonic()
        manifest = rollout(
            run_dir, work / "rollouts", k, in_flight=in_flight,
            all_started=lambda: marks.setdefault("all_started", time.monotonic()),
        )
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        runtime.close_models()
        stats = server.stats(times=True)
    start = stats["first_arrival"]
    until = marks.get("all_started")
    answered = sum(1 for t in stats["answered_at"] if until is None or start <= t <= until)
    seconds = (until - start) if until else stats["span_s"]
    rps = answered / seconds
    ideal = stats["ideal_rps"]
    counts = manifest["counts"]
    tail = stats["span_s"] - seconds
    print(f"\n== rollout: {counts['tasks']} tasks x k={k}, in flight {in_flight}, "
          f"policy and roles on a simulated server with C={cap.slots} slots")
    print(f"rollouts {counts['rollouts']} + failures {counts['failures']} = "
          f"{counts['expected']} ({'reconciled' if manifest['reconcile']['ok'] else 'NOT'}); "
          f"requests {stats['answered']} in {stats['span_s']:.1f} s, wall {wall:.1f} s, "
          f"client CPU {cpu:.1f} s ({cpu * 1000 / max(stats['answered'], 1):.2f} ms/request)")
    print(f"steady (until the last rollout started): {rps:.1f} requests/s of ideal {ideal:.0f}: "
          f"ratio {rps / ideal:.3f}; whole run {stats['achieved_rps'] / ideal:.3f} (tail after "
          f"the last start {tail:.1f} s); aim >= 0.9: {'met' if rps / ideal >= 0.9 else 'MISSED'}")
    passes = manifest["pass_hat_k"]
    print(f"pass^1 {passes['1']}, pass^{k} {passes[str(k)]} (a simulated server solves nothing "
          "but what its random answers happen to get right)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--rollouts", type=int, default=1280)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--token-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--only", choices=["serve-env", "instant", "rollout"])
    parser.add_argument("--tail-variants", action="store_true",
                        help="rollout also with in flight 2C and 4C, side by side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentmill-rl-bench-") as tmp:
        if args.only in (None, "serve-env"):
            serve_env_benchmark(args, Path(tmp))
        if args.only in (None, "instant"):
            serve_env_instant_benchmark(args, Path(tmp))
        if args.only in (None, "rollout"):
            rollout_benchmark(args, Path(tmp))


if __name__ == "__main__":
    main()
