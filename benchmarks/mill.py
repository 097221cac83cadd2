"""The whole `agentmill run`, as a user starts it, against a simulated server of known capacity.

`benchmarks.throughput` measures the episode stage alone; this runs the CLI itself in a child
process (every stage, every sink, the manifest and the card) against `benchmarks/sim_server.py`
and prints, from one run:

1. whole: 1,500 episodes on a server with 256 slots and 1.28 s per answer (64 tokens x 20 ms):
   - the whole-run ratio: requests the server answered per second over the span from the first
     request it saw to the last answer, against its ideal (slots / mean service time);
   - the process's CPU per model request: user + system time of the whole CLI process (startup,
     Beam, every stage, manifest, card; its worker processes too) over the requests answered;
   - idle intervals: the longest stretch with fewer than 64 requests in flight inside the run,
     and the ramp and drain at its start and end;
   - what the run's own chains of requests allow: `benchmarks.schedule` replays them through a
     model of the same server, as built, with every episode started at once, least progress
     first, and with an oracle that knows each episode's length in advance.
2. cores: a CPU-bound run (50 ms answers, slots to spare) in one process and with Beam's
   multi-process mode (`--direct_num_workers=2 --direct_running_mode=multi_processing`):
   requests per second of each, side by side, and whether the data sets are the same size with
   no duplicate ids.

    python -m benchmarks.mill                  # both, about 5 minutes on 2 cores
    python -m benchmarks.mill --only whole     # or cores
    python -m benchmarks.mill --profile        # the whole run under py-spy (if installed)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

LOW = 64
"""Fewer requests in flight than this counts as the engine idling."""
MULTI = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def run_cli(
    episodes: int,
    base_url: str,
    out: Path,
    beam_args: list[str] | None = None,
    profile: Path | None = None,
    in_flight: int | None = None,
) -> dict[str, Any]:
    """`agentmill run` in a child process; its wall time, CPU (with its own children) and peak
    memory from `wait4`, and where its console output went."""
    command = [
        sys.executable, "-m", "pipelines.cli", "run", "--episodes", str(episodes),
        "--backend", "openai", "--model", "sim", "--base-url", base_url, "--out", str(out),
    ]
    if in_flight is not None:  # not a CLI flag: a config file with it
        config = out.with_suffix(".yaml")
        config.write_text(json.dumps({"in_flight": in_flight}))
        command += ["--config", str(config)]
    if beam_args:
        command += ["--", *beam_args]
    if profile is not None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [spy, "record", "--rate", "50", "--subprocesses", "--format", "raw",
                   "--output", str(profile), "--", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    log = out.with_suffix(".log")
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=sink)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        print(log.read_text()[-3000:])
        raise SystemExit(f"agentmill run failed (status {status}); log: {log}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_mib": usage.ru_maxrss / 1024,
        "log": log,
        "manifest": json.loads((out / "manifest.json").read_text()),
    }


def in_flight_intervals(stats: dict[str, Any], low: int = LOW) -> dict[str, float]:
    """From the server's arrival and end times: the longest interval inside the run with fewer
    than `low` requests in flight, and the ramp (start) and drain (end) below `low`."""
    events = sorted([(t, 1) for t in stats["arrived_at"]] + [(t, -1) for t in stats["left_at"]])
    if not events:
        return {"longest_inside_s": 0.0, "ramp_s": 0.0, "drain_s": 0.0, "at_s": 0.0}
    first, last = events[0][0], events[-1][0]
    level, since = 0, first
    intervals: list[tuple[float, float]] = []
    for when, step in events:
        before = level
        level += step
        if before >= low > level:
            since = when
        elif before < low <= level:
            intervals.append((since, when))
    if level < low:
        intervals.append((since, last))
    ramp = intervals[0][1] - first if intervals and intervals[0][0] == first else 0.0
    drain = last - intervals[-1][0] if intervals and intervals[-1][1] == last else 0.0
    inside = [(b - a, a) for a, b in intervals if a != first and b != last]
    longest, at = max(inside, default=(0.0, first))
    return {"longest_inside_s": longest, "ramp_s": ramp, "drain_s": drain, "at_s": at - first}


def ids_of(out: Path, folder: str, column: str = "id") -> list[str]:
    from pipelines.parquet_io import read_column

    return read_column(out / folder, column)


def whole(args: argparse.Namespace, work: Path) -> None:
    from benchmarks.sim_server import Capacity, start_server

    cap = Capacity(slots=args.slots, token_s=args.token_ms / 1000, tokens=args.tokens)
    print(
        f"\n== whole: `agentmill run --episodes {args.episodes} --backend openai` against a "
        f"simulated server, C={cap.slots} slots x {cap.service_s(None):.2f} s per answer"
    )
    out = work / "whole"
    profile = work / "whole.pyspy.txt" if args.profile else None
    with start_server(cap) as server:
        server.reset()
        run = run_cli(args.episodes, server.base_url, out, profile=profile,
                      in_flight=args.in_flight)
        stats = server.stats(times=True)
    report_whole(run, stats)
    from benchmarks import schedule

    work = schedule.work_of(out)
    bound = run["manifest"]["config"]["models"]["agent"]["max_in_flight"]
    window = run["manifest"]["config"]["in_flight"]
    print(f"model of this run's chains (benchmarks.schedule; client bound {bound}, stage window "
          f"{window}; at a bound of {cap.slots}, the slots, in brackets):")
    at_bound = schedule.model(work, slots=cap.slots, answer_s=cap.service_s(None), bound=bound,
                              window=window)
    at_slots = schedule.model(work, slots=cap.slots, answer_s=cap.service_s(None),
                              bound=cap.slots, window=window)
    print("  " + "; ".join(f"{name} {at_bound[name]:.3f} ({at_slots[name]:.3f})"
                           for name in at_bound))
    if profile is not None:
        print(f"  py-spy profile (raw, collapsed stacks): {profile}")
        keep = Path(args.keep_profile) if args.keep_profile else None
        if keep:
            shutil.copy(profile, keep)
            print(f"  copied to {keep}")


def report_whole(run: dict[str, Any], stats: dict[str, Any]) -> None:
    manifest = run["manifest"]
    counts = manifest["counts"]
    ideal = stats["ideal_rps"]
    ratio = stats["achieved_rps"] / ideal if ideal else 0.0
    per_request = run["cpu_s"] * 1000 / max(stats["answered"], 1)
    gaps = in_flight_intervals(stats)
    print(
        f"server: {stats['answered']} requests answered in {stats['span_s']:.1f} s (first "
        f"request to last answer), {stats['achieved_rps']:.1f}/s against an ideal {ideal:.1f}/s "
        f"(mean service {stats['mean_service_s']:.2f} s), busiest {stats['max_busy']} slots + "
        f"{stats['max_queued']} queued"
    )
    print(
        f"run: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU, peak {run['max_rss_mib']:.0f} "
        f"MiB; {counts.get('tasks', 0)} tasks, {counts.get('trajectories', 0)} trajectories, "
        f"{counts.get('sft', 0)} sft + {counts.get('rejected', 0)} rejected, "
        f"{counts.get('failures', 0)} failures; reconciled: {manifest['reconcile']['ok']}"
    )
    print(
        f"whole-run ratio {ratio:.3f} (target >= 0.9: {'met' if ratio >= 0.9 else 'MISSED'}); "
        f"CPU per model request {per_request:.2f} ms, whole process with startup (target <= 3: "
        f"{'met' if per_request <= 3 else 'MISSED'})"
    )
    inside = gaps["longest_inside_s"]
    print(
        f"fewer than {LOW} requests in flight: longest inside the run {inside:.1f} s (at "
        f"{gaps['at_s']:.1f} s; target <= 2: {'met' if inside <= 2 else 'MISSED'}); ramp "
        f"{gaps['ramp_s']:.1f} s at the start, drain {gaps['drain_s']:.1f} s at the end"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU a live process has spent so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cores(args: argparse.Namespace, work: Path) -> None:
    """One process against two worker processes on a CPU-bound workload, side by side."""
    from benchmarks.sim_server import Capacity, start_server

    cap = Capacity(slots=4096, token_s=args.cpu_answer_ms / 1000 / 50, tokens=50)
    print(
        f"\n== cores: {args.cpu_episodes} episodes, {args.cpu_answer_ms:g} ms answers and slots "
        f"to spare (the client's CPU is the limit): one process against "
        f"{' '.join(MULTI)}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    )
    rows = []
    with start_server(cap) as server:
        for label, beam_args in (("one process", None), ("two workers", MULTI)):
            out = work / f"cores-{len(rows)}"
            server.reset()
            before = cpu_seconds(server.process.pid)
            run = run_cli(args.cpu_episodes, server.base_url, out, beam_args)
            stats = server.stats()
            stats["server_cpu_s"] = cpu_seconds(server.process.pid) - before
            ids = ids_of(out, "trajectories")
            rows.append((label, run, stats, ids))
    print(f"{'':<12} {'requests':>8} {'span s':>7} {'req/s':>7} {'CPU s':>6} {'wall s':>6} "
          f"{'server CPU s':>12} {'trajectories':>12} {'duplicate ids':>13}")
    for label, run, stats, ids in rows:
        print(
            f"{label:<12} {stats['answered']:>8} {stats['span_s']:>7.1f} "
            f"{stats['achieved_rps']:>7.1f} {run['cpu_s']:>6.1f} {run['wall_s']:>6.1f} "
            f"{stats['server_cpu_s']:>12.1f} {len(ids):>12} {len(ids) - len(set(ids)):>13}"
        )
    one, two = rows[0], rows[1]
    speedup = two[2]["achieved_rps"] / max(one[2]["achieved_rps"], 1e-9)
    sizes = [
        {k: run["manifest"]["counts"].get(k) for k in ("tasks", "trajectories", "rl")}
        for _, run, _, _ in rows
    ]  # sft against rejected varies: the simulated server answers at random
    same = len(one[3]) == len(two[3]) and sizes[0] == sizes[1]
    print(
        f"two workers: {speedup:.2f}x the requests/s of one process (target >= 1.7: "
        f"{'met' if speedup >= 1.7 else 'MISSED'}); same data set size: {same}; wall time "
        f"{two[1]['wall_s']:.0f} s against {one[1]['wall_s']:.0f} s (start-up and the stages "
        "without model work are outside the span); the simulated server shares the cores "
        f"({two[2]['server_cpu_s'] / max(two[2]['span_s'], 1e-9):.2f} of a core over the two "
        "workers' span)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["whole", "cores"], action="append")
    parser.add_argument("--episodes", type=int, default=1500)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--token-ms", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--in-flight", type=int, help="the run's in_flight (default: its own)")
    parser.add_argument("--cpu-episodes", type=int, default=1500)
    parser.add_argument("--cpu-answer-ms", type=float, default=50.0)
    parser.add_argument("--profile", action="store_true", help="record the whole run with py-spy")
    parser.add_argument("--keep-profile", help="copy the profile here")
    parser.add_argument("--work", type=Path, help="keep outputs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentmill-mill-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(
            f"agentmill whole-run benchmark: {os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.2f}"
        )
        for phase in args.only or ["whole", "cores"]:
            {"whole": whole, "cores": cores}[phase](args, work)


if __name__ == "__main__":
    main()
