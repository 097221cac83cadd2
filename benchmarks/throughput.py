"""Throughput of the episode stage against a server of known capacity, and the pipeline's own cost.

Runs the real episode stage (`pipelines.stages.RunEpisodes` on Beam's in-process FnApiRunner:
tasks read from Parquet, trajectories and failures written to Parquet) and prints, from one run:

1. capacity: the `openai` backend against `benchmarks/sim_server.py` (C slots, a fixed time per
   generated token, queueing beyond C, in its own process): achieved requests per second, the
   server's ideal for that workload (C / mean service time), their ratio, the same with the
   client's request bound at exactly C, and with one episode at a time; and agentmill's own CPU
   per model request.
2. faults: the same against a server that answers 429, 503, drops connections and answers slowly
   at set rates: the retries it took, and tasks in = trajectories + failures, none lost or twice.
3. instant: a backend that answers at once (schema-valid values, episodes of exactly 6 user
   turns): CPU milliseconds per episode and per request, and peak memory (max RSS) of a fresh
   process at 1,000 and 10,000 episodes (records stream to Parquet as bundles finish).
4. run: the whole mill (agents, tasks, episodes, judge, every sink) on the instant backend at
   1,000 and 5,000 episodes: CPU, wall time and peak memory of the in-process runner.

    python -m benchmarks.throughput                      # everything, about 12 minutes
    python -m benchmarks.throughput --only capacity      # or faults / instant / run

"Achieved" is measured from the server's first request until the stage started its last episode
(the steady state: work was waiting to start). After that the run drains: the last episodes
finish with fewer and fewer in flight, which no scheduler can fill; the whole-run figure,
drain included, is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import kib_per_extra, peak_rss_mib, run_child  # noqa: E402

AGENTS = 64
TURNS = 6


# -- inputs ------------------------------------------------------------------------------------


def make_inputs(folder: Path, episodes: int, agents: int = AGENTS, seed: int = 0) -> Path:
    """`episodes` tasks over `agents` agents from the seed library, as Parquet under `folder`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import arrow
    from schemas.records import AgentSpec, Rubric, Task, ToolSpec
    from toolspecs.compose import DIFFICULTIES, choose_tools
    from toolspecs.load import LIBRARY, load_file, spec_files

    pool = [s for f in spec_files([LIBRARY]) for s in load_file(f) if isinstance(s, ToolSpec)]
    specs: list[AgentSpec] = []
    for slot in range(agents):
        domain, tools = choose_tools(pool, slot, seed, 3, 6)
        specs.append(
            AgentSpec(
                name=f"Agent {slot}",
                domain=domain,
                system_prompt=(
                    f"You are Agent {slot}, a careful {domain} assistant. Help the user reach "
                    "their goal with the tools you have. Ask for missing details, confirm "
                    "before anything that changes their account, and report ids exactly as the "
                    "tools return them. Keep replies short and concrete."
                ),
                tool_ids=[t.id for t in tools],
                tools=tools,
                policy="Never invent results; only report what a tool returned.",
            )
        )
    rng = random.Random(seed)
    tasks = []
    for index in range(episodes):
        agent = specs[index % agents]
        names = [t.name for t in agent.tools]
        tasks.append(
            Task(
                agent_id=agent.id,
                goal=f"Get help from the {agent.domain} assistant with request #{index}: use "
                f"{names[0]} and then {names[-1]} for my account.",
                user_knows=[f"account number A{rng.randint(1000, 9999)}", "the city is Lyon"],
                user_withholds=[f"the confirmation code is C{index}"],
                difficulty=DIFFICULTIES[index % len(DIFFICULTIES)],
                rubric=Rubric(
                    success_criteria=["The agent completes the request", "Ids are reported"],
                    expected_tools=names[:2],
                ),
                initial_state={"account": f"A{index}"},
            )
        )
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pylist([arrow.to_row(a) for a in specs], schema=arrow.AGENT_SCHEMA),
        folder / "agents.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist([arrow.to_row(t) for t in tasks], schema=arrow.TASK_SCHEMA),
        folder / "tasks.parquet",
        row_group_size=1000,
    )
    return folder




# -- the episode stage -------------------------------------------------------------------------


class PairWithAgent(beam.DoFn):
    """Task rows -> (Task, AgentSpec); the few agents are read once per worker."""

    def __init__(self, agents_file: str) -> None:
        self.agents_file = agents_file

    def setup(self) -> None:
        import pyarrow.parquet as pq

        from schemas import arrow
        from schemas.records import AgentSpec

        rows = pq.read_table(self.agents_file).to_pylist()
        self.agents = {r["id"]: arrow.from_row(AgentSpec, r) for r in rows}

    def process(self, row: dict[str, Any]) -> Any:
        from schemas import arrow
        from schemas.records import Task

        task = arrow.from_row(Task, row)
        yield task, self.agents[task.agent_id]


def run_stage(config: Any, inputs: Path, out: Path) -> Any:
    """tasks.parquet -> RunEpisodes -> trajectories/ and failures/ Parquet (the mill's own
    streaming sink, `WriteRecords`), on FnApiRunner."""
    from pipelines.parquet_io import WriteRecords
    from pipelines.shared import in_process_pipeline
    from pipelines.stages import RunEpisodes
    from schemas import arrow

    pipeline = in_process_pipeline()
    played = (
        pipeline
        | "ReadTasks" >> beam.io.ReadFromParquet(str(inputs / "tasks.parquet"))
        | "PairWithAgent" >> beam.ParDo(PairWithAgent(str(inputs / "agents.parquet")))
        | "RunEpisodes" >> RunEpisodes(config)
    )
    _ = played.trajectories | "WriteTrajectories" >> WriteRecords(
        str(out / "trajectories"), arrow.TRAJECTORY_SCHEMA, arrow.to_row
    )
    _ = played.failures | "WriteFailures" >> WriteRecords(
        str(out / "failures"), arrow.FAILURE_SCHEMA, arrow.to_row
    )
    result = pipeline.run()
    result.wait_until_finish()
    return result


def stage_config(
    episodes: int, model: dict[str, Any], in_flight: int, batch_size: int = 64
) -> Any:
    """A run config with `model` (ModelConfig fields) in every role."""
    from pipelines.config import ROLES, load_config

    overrides: dict[str, Any] = {
        "episodes": episodes,
        "in_flight": in_flight,
        "batch_size": batch_size,
        "episode.max_turns": TURNS,
    }
    for role in ROLES:
        for key, value in model.items():
            overrides[f"models.{role}.{key}"] = value
    return load_config(None, overrides)


def landed(inputs: Path, out: Path) -> dict[str, int]:
    """Tasks in against trajectories and failures out: lost and duplicated task ids."""
    from pipelines.parquet_io import parquet_files

    def column(folder: Path, name: str) -> list[str]:
        return [v for f in parquet_files(folder) for v in read_column(f, name)]

    tasks = read_column(inputs / "tasks.parquet", "id")
    done = column(out / "trajectories", "task_id")
    failed = column(out / "failures", "input_id")
    seen = Counter(done + failed)
    known = set(tasks)
    return {
        "tasks": len(tasks),
        "trajectories": len(done),
        "failures": len(failed),
        "lost": len(known - set(seen)),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "unknown": len(set(seen) - known),
    }


def longest_episode(out: Path) -> int:
    """Most requests one trajectory needed: one after another, so the drain lasts at least that
    many service times."""
    from pipelines.parquet_io import parquet_files

    longest = 0
    for file in parquet_files(out / "trajectories"):
        for text in read_column(file, "token_counts"):
            longest = max(longest, sum(c["requests"] for c in json.loads(text).values()))
    return longest


def read_column(file: Path, name: str) -> list[Any]:
    import pyarrow.parquet as pq

    return pq.read_table(file, columns=[name]).column(name).to_pylist()


def token_metrics(result: Any) -> dict[str, dict[str, Any]]:
    from pipelines.shared import pipeline_metrics

    return pipeline_metrics(result)[0]


def openai_model(base_url: str, max_in_flight: int | None = None) -> dict[str, Any]:
    """The `openai` backend on the simulated server; the default request bound unless given."""
    model: dict[str, Any] = {"backend": "openai", "model": "sim", "base_url": base_url}
    if max_in_flight:
        model["max_in_flight"] = max_in_flight
    return model


# -- 1. capacity -------------------------------------------------------------------------------


def steady(stats: dict[str, Any], until: float | None) -> tuple[float, float]:
    """(seconds, requests/s) from the server's first request until `until`, when the stage
    started its last episode (both `time.monotonic`, one clock for all processes on Linux)."""
    start = stats["first_arrival"]
    if until is None or start is None or until <= start:
        return stats["span_s"], stats["achieved_rps"]
    answered = sum(1 for t in stats["answered_at"] if start <= t <= until)
    return until - start, answered / (until - start)


def capacity(args: argparse.Namespace, work: Path) -> None:
    from benchmarks.sim_server import Capacity, start_server
    from pipelines import batching, runtime
    from simulators.llm.config import ModelConfig

    cap = Capacity(slots=args.slots, token_s=args.token_ms / 1000, tokens=args.tokens)
    service = cap.service_s(None)
    bound = ModelConfig().max_in_flight
    print(
        f"\n== capacity: simulated server, C={cap.slots} slots, {cap.tokens} tokens x "
        f"{args.token_ms:g} ms = {service:.2f} s per request, queueing beyond C; ideal "
        f"{cap.ideal_rps(service):.0f} requests/s"
    )
    plan = [
        ("defaults", args.episodes, args.in_flight, None),
        ("bound = C", args.episodes, args.in_flight, cap.slots),
        ("one at a time", args.sequential_episodes, 1, None),
    ]
    if args.skip_bound_c:
        plan.pop(1)
    rows = []
    with start_server(cap) as server:
        for label, episodes, in_flight, max_in_flight in plan:
            inputs = make_inputs(work / f"capacity-{len(rows)}-in", episodes)
            out = work / f"capacity-{len(rows)}-out"
            model = openai_model(server.base_url, max_in_flight)
            config = stage_config(episodes, model, in_flight, 64 if in_flight > 1 else 1)
            server.reset()
            batching.inputs_done.pop("episodes", None)
            cpu, wall = time.process_time(), time.monotonic()
            run_stage(config, inputs, out)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            client = runtime.model(config.models.agent)
            retries = getattr(client, "retries", 0)
            runtime.close_models()
            stats = server.stats(times=True)
            until = batching.inputs_done.get("episodes") if in_flight > 1 else None
            rows.append(
                {
                    "label": label,
                    "in_flight": in_flight,
                    "bound": max_in_flight or bound,
                    "stats": stats,
                    "steady": steady(stats, until),
                    "cpu": cpu,
                    "wall": wall,
                    "counts": landed(inputs, out),
                    "retries": retries,
                    "longest": longest_episode(out),
                }
            )
    print(
        f"{'':<14} {'episodes':>8} {'episodes':>9} {'requests':>9} {'requests':>8} "
        f"{'steady':>7} {'achieved':>9} {'ideal':>6} {'ratio':>6} {'whole run':>9} "
        f"{'CPU ms':>7}"
    )
    print(
        f"{'':<14} {'':>8} {'in flight':>9} {'in flight':>9} {'':>8} "
        f"{'s':>7} {'req/s':>9} {'req/s':>6} {'':>6} {'ratio':>9} {'per req':>7}"
    )
    for row in rows:
        stats, (seconds, rps) = row["stats"], row["steady"]
        ideal = stats["ideal_rps"]
        print(
            f"{row['label']:<14} {row['counts']['tasks']:>8} {row['in_flight']:>9} "
            f"{row['bound']:>9} {stats['answered']:>8} {seconds:>7.1f} {rps:>9.1f} "
            f"{ideal:>6.0f} {rps / ideal:>6.3f} {stats['achieved_rps'] / ideal:>9.3f} "
            f"{row['cpu'] * 1000 / max(stats['answered'], 1):>7.2f}"
        )
    for row in rows:
        stats, counts = row["stats"], row["counts"]
        print(
            f"  {row['label']}: whole run {stats['span_s']:.1f} s at the server, stage "
            f"{row['wall']:.1f} s with Beam start and Parquet, client CPU {row['cpu']:.1f} s, "
            f"busiest {stats['max_busy']} slots + {stats['max_queued']} queued, retries "
            f"{row['retries']}, longest episode {row['longest']} requests in sequence; "
            f"{counts['trajectories']} trajectories + {counts['failures']} failures of "
            f"{counts['tasks']} tasks, lost {counts['lost']}, duplicated {counts['duplicated']}"
        )
    first, last = rows[0], rows[-1]
    c = first["steady"][1] / first["stats"]["ideal_rps"]
    s = last["steady"][1] / last["stats"]["ideal_rps"]
    print(
        f"ratio to the server's ideal: {c:.3f} with {first['in_flight']} episodes in flight, "
        f"{s:.4f} one at a time ({c / s:.0f}x); target >= 0.9 at C={cap.slots}: "
        f"{'met' if c >= 0.9 else 'MISSED'}"
    )
    ms = first["cpu"] * 1000 / max(first["stats"]["answered"], 1)
    print(
        f"agentmill's own CPU per model request (openai backend, whole stage with Beam and "
        f"Parquet): {ms:.2f} ms; budget 3 ms: {'met' if ms <= 3 else 'MISSED'}"
    )


# -- 2. faults ---------------------------------------------------------------------------------


def faults(args: argparse.Namespace, work: Path) -> None:
    from benchmarks.sim_server import Capacity, start_server
    from pipelines import runtime

    cap = Capacity(
        slots=args.slots,
        token_s=args.token_ms / 1000,
        tokens=args.tokens,
        p429=0.05,
        p5xx=0.03,
        pdrop=0.02,
        pslow=0.02,
        slow_factor=5.0,
        retry_after_s=1.0,
        seed=1,
    )
    print(
        f"\n== faults: {cap.p429:.0%} 429 (Retry-After {cap.retry_after_s:g} s), {cap.p5xx:.0%} "
        f"503, {cap.pdrop:.0%} connections dropped mid-answer, {cap.pslow:.0%} answers "
        f"{cap.slow_factor:g}x slower"
    )
    episodes = args.fault_episodes
    inputs = make_inputs(work / "faults-in", episodes, seed=3)
    out = work / "faults-out"
    with start_server(cap) as server:
        config = stage_config(episodes, openai_model(server.base_url), args.in_flight)
        started = time.monotonic()
        result = run_stage(config, inputs, out)
        wall = time.monotonic() - started
        client = runtime.model(config.models.agent)
        retries, requests = getattr(client, "retries", 0), getattr(client, "requests", 0)
        runtime.close_models()
        stats = server.stats()
    counts = landed(inputs, out)
    tokens = token_metrics(result)
    per_role = ", ".join(f"{role} {t.get('retries', 0)}" for role, t in sorted(tokens.items()))
    ideal = stats["ideal_rps"]
    print(
        f"server: {stats['received']} requests received, {stats['answered']} answered, "
        f"{stats['rate_limited']} x 429, {stats['server_errors']} x 503, "
        f"{stats['dropped']} dropped, {stats['slow']} slow"
    )
    print(
        f"client: {requests} requests took {retries} retries (per role, on answered requests: "
        f"{per_role}); {stats['achieved_rps']:.1f} requests/s over the whole run = "
        f"{stats['achieved_rps'] / ideal if ideal else 0:.3f} of ideal; stage {wall:.1f} s"
    )
    balanced = counts["tasks"] == counts["trajectories"] + counts["failures"]
    ok = balanced and not (counts["lost"] or counts["duplicated"] or counts["unknown"])
    print(
        f"tasks {counts['tasks']} = {counts['trajectories']} trajectories + "
        f"{counts['failures']} failures; lost {counts['lost']}, duplicated "
        f"{counts['duplicated']}: {'correct' if ok else 'WRONG'}"
    )


# -- 3. instant backend: CPU and memory --------------------------------------------------------


def instant_model() -> Any:
    """A model that answers at once with schema-valid values and keeps nothing; users and agents
    never finish early, so every episode runs exactly `TURNS` user turns."""
    from simulators.llm.base import ConstrainedChatModel, RawCompletion, Sampling
    from simulators.llm.scripted import schema_instance

    class InstantModel(ConstrainedChatModel):
        name = "instant"

        def __init__(self) -> None:
            self.rng = random.Random(0)

        async def generate(
            self, messages: list[dict[str, str]], schema: dict[str, Any] | None, sampling: Sampling
        ) -> RawCompletion:
            value = schema_instance(schema or {"type": "string"}, self.rng)
            if isinstance(value, dict):
                if "done" in value:
                    value["done"] = False
                    value["message"] = value.get("message") or "Please go on."
                if "final" in value:
                    value["final"] = False
            text = value if isinstance(value, str) else json.dumps(value)
            prompt = sum(len(m["content"]) for m in messages) // 4 + 1
            return RawCompletion(text, prompt, len(text) // 4 + 1, "stop")

    return InstantModel()


def instant_child(episodes: int, inputs: Path, out: Path) -> None:
    """One measured run in a fresh process; prints a JSON line."""
    from pipelines import runtime
    from pipelines.parquet_io import parquet_files
    from simulators.llm import registry
    from simulators.llm.config import ModelConfig

    registry.register(ModelConfig(backend="scripted", model="instant"), instant_model())
    config = stage_config(episodes, {"backend": "scripted", "model": "instant"}, 512)
    cpu, wall = time.process_time(), time.monotonic()
    result = run_stage(config, inputs, out)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    tokens = token_metrics(result)
    runtime.close_models()
    turns: Counter[int] = Counter()
    for file in parquet_files(out / "trajectories"):
        turns.update(read_column(file, "turns"))
    print(
        json.dumps(
            {
                "episodes": episodes,
                "cpu_s": cpu,
                "wall_s": wall,
                "requests": sum(t.get("requests", 0) for t in tokens.values()),
                "max_rss_mib": peak_rss_mib(),
                "turns": dict(turns),
                **landed(inputs, out),
            }
        )
    )


def whole_run_child(episodes: int, out: Path) -> None:
    """The whole mill (`pipelines.run.run`: agents, tasks, episodes, judge, every sink) on the
    instant backend in a fresh process; prints a JSON line."""
    from simulators.llm import registry
    from simulators.llm.config import ModelConfig

    registry.register(ModelConfig(backend="scripted", model="instant"), instant_model())
    config = stage_config(episodes, {"backend": "scripted", "model": "instant"}, 512)
    config = config.model_copy(update={"out": str(out), "tasks_per_agent": 20})
    import pipelines.run as mill

    peaks: dict[str, float] = {}
    build_manifest = mill.build_manifest

    def measured(*args: Any, **kwargs: Any) -> Any:
        peaks["pipeline"] = peak_rss_mib()  # before the manifest and card read the outputs
        return build_manifest(*args, **kwargs)

    mill.build_manifest = measured
    cpu, wall = time.process_time(), time.monotonic()
    manifest = mill.run(config)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    print(
        json.dumps(
            {
                "cpu_s": cpu,
                "wall_s": wall,
                "pipeline_mib": peaks["pipeline"],
                "max_rss_mib": peak_rss_mib(),
                "reconciled": manifest["reconcile"]["ok"],
                "trajectories": manifest["counts"]["trajectories"],
            }
        )
    )


def whole_run(args: argparse.Namespace, work: Path) -> None:
    print(
        "\n== instant backend: the whole mill in process (FnApiRunner), each size in a fresh "
        "process"
    )
    print(f"{'episodes':>8} {'CPU s':>6} {'wall s':>6} {'pipeline MiB':>12} {'with card MiB':>13}")
    peaks: list[float] = []
    for episodes in args.run_sizes:
        data = run_child(
            "benchmarks.throughput",
            ["--run-child", str(episodes), "--out", str(work / f"run-{episodes}")],
            f"whole run of {episodes} episodes",
        )
        peaks.append(data["pipeline_mib"])
        print(
            f"{episodes:>8} {data['cpu_s']:>6.1f} {data['wall_s']:>6.1f} "
            f"{data['pipeline_mib']:>12.0f} {data['max_rss_mib']:>13.0f}"
            + ("" if data["reconciled"] else "  counts do not reconcile")
        )
    per = kib_per_extra(args.run_sizes, peaks)
    if per is not None:
        print(f"  pipeline peak {per:+.1f} KiB per extra episode")


def instant(args: argparse.Namespace, work: Path) -> None:
    print(
        f"\n== instant backend: the episode stage alone (Parquet in, Parquet out), episodes of "
        f"{TURNS} user turns, each size in a fresh process"
    )
    print(
        f"{'episodes':>8} {'CPU s':>6} {'wall s':>6} {'requests':>8} "
        f"{'CPU ms/ep':>9} {'CPU ms/req':>10} {'peak RSS MiB':>12} {'lost':>4} {'dup':>4}"
    )
    peaks: list[float] = []
    for episodes in args.memory_sizes:
        inputs = work / f"instant-{episodes}-in"
        if not (inputs / "tasks.parquet").exists():
            make_inputs(inputs, episodes, seed=episodes)
        args_child = ["--instant-child", str(episodes), "--inputs", str(inputs),
                      "--out", str(work / f"instant-{episodes}-out")]
        data = run_child(
            "benchmarks.throughput", args_child, f"instant run of {episodes} episodes"
        )
        peaks.append(data["max_rss_mib"])
        print(
            f"{episodes:>8} {data['cpu_s']:>6.1f} {data['wall_s']:>6.1f} "
            f"{data['requests']:>8} {data['cpu_s'] * 1000 / episodes:>9.2f} "
            f"{data['cpu_s'] * 1000 / max(data['requests'], 1):>10.3f} "
            f"{data['max_rss_mib']:>12.0f} {data['lost']:>4} {data['duplicated']:>4}"
        )
        if set(data["turns"]) != {str(TURNS)}:
            print(f"  turns per episode: {data['turns']}")
    per = kib_per_extra(args.memory_sizes, peaks)
    if per is not None:
        sizes = args.memory_sizes
        print(
            f"  peak memory {peaks[-1] - peaks[0]:+.0f} MiB from {sizes[0]:,} to {sizes[-1]:,} "
            f"episodes ({per:.1f} KiB per extra episode)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", choices=["capacity", "faults", "instant", "run"], action="append"
    )
    parser.add_argument("--slots", type=int, default=256, help="server slots C")
    parser.add_argument("--token-ms", type=float, default=20.0, help="server time per token")
    parser.add_argument("--tokens", type=int, default=50, help="tokens generated per answer")
    parser.add_argument("--episodes", type=int, default=2000, help="episodes per capacity run")
    parser.add_argument("--sequential-episodes", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=512, help="episodes in flight")
    parser.add_argument("--skip-bound-c", action="store_true", help="no run with bound = C")
    parser.add_argument("--fault-episodes", type=int, default=600)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--work", type=Path, help="keep inputs and outputs here")
    parser.add_argument("--run-sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--instant-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.instant_child:
        instant_child(args.instant_child, args.inputs, args.out)
        return
    if args.run_child:
        whole_run_child(args.run_child, args.out)
        return
    phases = args.only or ["capacity", "faults", "instant", "run"]
    with tempfile.TemporaryDirectory(prefix="agentmill-bench-") as tmp:
        work = args.work or Path(tmp)
        load = os.getloadavg()[0]
        print(f"agentmill throughput benchmark: {os.cpu_count()} cores, load average {load:.2f}")
        phase_fns = {"capacity": capacity, "faults": faults, "instant": instant, "run": whole_run}
        for phase in phases:
            phase_fns[phase](args, work)


if __name__ == "__main__":
    main()
