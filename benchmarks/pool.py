"""Pool synthesis at scale: tools per second and peak memory at N = 1,000 and 10,000.

Runs the real pool pipeline (`pipelines.pool`: seed library -> grown domains -> evolved tools ->
exact and MinHash-LSH near-duplicate removal -> Parquet and JSONL -> report) on Beam's in-process
runner, against a scripted synthesizer that answers at once with schema-valid JSON whose words
are drawn from a large vocabulary (so names and descriptions are as varied as a real model's and
dedup removes few). Each N runs in a fresh process; peak memory is that process's VmHWM.

    python -m benchmarks.pool                    # N = 1,000 and 10,000, about 4 minutes
    python -m benchmarks.pool --sizes 1000 3000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import kib_per_extra, peak_rss_mib, run_child  # noqa: E402

SYLLABLES = ("ka ro mi te lu sa no vi pe da zo ri fu ne to ma li ga be so "
             "chi wa ke yu ha mo ti ra de pu").split()


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def varied_instance(schema: Any, rng: random.Random) -> Any:
    """A value valid against the synthesizer's answer schemas, with varied words."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        return {name: varied_instance(sub, rng) for name, sub in schema["properties"].items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), min(3, int(schema.get("maxItems", 3))))
        return [varied_instance(schema.get("items", {}), rng) for _ in range(count)]
    if kind == "string":
        text = " ".join(_word(rng) for _ in range(rng.randint(3, 8)))
        return text[: int(schema.get("maxLength", 200))].strip().ljust(
            int(schema.get("minLength", 0)), "x")
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def varied_model() -> Any:
    from simulators.llm.scripted import ScriptedModel

    def respond(request: Any) -> Any:
        rng = random.Random(f"{request.sampling.seed}:{request.last}")
        return varied_instance(request.schema, rng)

    return ScriptedModel(respond, name="varied", keep=16)


def child(target: int, out: Path) -> None:
    """One measured build in a fresh process; prints a JSON line."""
    from pipelines.pool import PoolConfig, run_synth
    from simulators.llm import registry
    from simulators.llm.config import ModelConfig

    config = ModelConfig(backend="scripted", model="varied")
    registry.register(config, varied_model())
    started, cpu = time.monotonic(), time.process_time()
    summary = run_synth(PoolConfig(out=str(out), target=target, synthesizer=config))
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    print(json.dumps({
        "target": target, "wall_s": wall, "cpu_s": cpu, "peak_mib": peak_rss_mib(),
        "kept": summary["pool"]["kept"], "domains": summary["domains"]["count"],
        "exact": summary["pool"]["exact_duplicates_removed"],
        "near": summary["pool"]["near_duplicates_removed"],
        "failures": summary["reconcile"]["synthesis_failures"],
        "near_rate": summary["near_duplicates"]["rate"], "ok": summary["reconcile"]["ok"],
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--work", type=Path, help="keep the pools here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out)
        return
    print(f"agentmill pool benchmark: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          "scripted synthesizer, each size in a fresh process")
    print(f"{'N':>7} {'wall s':>7} {'CPU s':>7} {'tools/s':>8} {'peak MiB':>9} {'kept':>6} "
          f"{'domains':>7} {'exact':>6} {'near':>5} {'fail':>5} {'near rate':>9} {'ok':>3}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="agentmill-pool-") as tmp:
        work = args.work or Path(tmp)
        for size in args.sizes:
            row = run_child("benchmarks.pool", ["--child", str(size), "--out",
                                                 str(work / f"pool-{size}")], f"pool of {size}")
            rows.append(row)
            print(f"{size:>7,} {row['wall_s']:>7.1f} {row['cpu_s']:>7.1f} "
                  f"{size / row['wall_s']:>8.1f} {row['peak_mib']:>9.0f} {row['kept']:>6} "
                  f"{row['domains']:>7} {row['exact']:>6} {row['near']:>5} {row['failures']:>5} "
                  f"{row['near_rate']:>9.2%} {'yes' if row['ok'] else 'NO':>3}")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        grow_n = last["target"] / first["target"]
        grow_mem = last["peak_mib"] / first["peak_mib"]
        per = kib_per_extra([first["target"], last["target"]],
                            [first["peak_mib"], last["peak_mib"]])
        print(f"N x{grow_n:.0f} -> peak memory x{grow_mem:.2f} "
              f"({last['peak_mib'] - first['peak_mib']:+.0f} MiB, {per:.1f} KiB per extra tool)")


if __name__ == "__main__":
    main()
