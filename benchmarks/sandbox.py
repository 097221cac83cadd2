"""Sandbox cost: start-to-result time of a trivial `run_python`, and 32 sandboxes at once.

    python -m benchmarks.sandbox [--runs 40] [--at-once 32]

Prints, side by side in one run: the median and p90 wall time of a trivial sandboxed run (a
fresh bwrap, namespaces, the launcher dropping privileges, `print(1)`, the result parsed) and of
the bare interpreter started directly on the same code (`python -I -S -c`), so the sandbox's own
overhead is their difference; then N sandboxes started at once (each its own workspace and uid),
with how many failed and the wall time until the last finished.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from simulators import sandbox
from simulators.workspace import Workspace


def _quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]


def bare(runs: int) -> list[float]:
    """Wall seconds of the interpreter alone, started the way the sandbox starts it."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [os.path.realpath(sys.executable), "-I", "-S", "-c", "print(1)"],
            check=True, capture_output=True, env={},
        )
        times.append(time.perf_counter() - started)
    return times


def sandboxed(runs: int) -> tuple[list[float], int]:
    times, failed = [], 0
    with Workspace({"main.py": "print(1)\n"}) as workspace:
        for _ in range(runs):
            started = time.perf_counter()
            result = asyncio.run(workspace.run(mode="code", code="print(1)"))
            times.append(time.perf_counter() - started)
            failed += not (result.ok and result.stdout == "1\n")
    return times, failed


async def at_once(n: int) -> tuple[float, int, list[str]]:
    workspaces = [Workspace({"n.txt": str(i)}) for i in range(n)]
    try:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(w.run(mode="code", code="print(open('n.txt').read())") for w in workspaces)
        )
        wall = time.perf_counter() - started
    finally:
        for w in workspaces:
            w.close()
    errors = [
        f"{i}: {r.error} {r.stderr[-200:]}" for i, r in enumerate(results)
        if not r.ok or r.stdout.strip() != str(i)
    ]
    return wall, len(errors), errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--at-once", type=int, default=32)
    args = parser.parse_args(argv)
    sandbox.require_sandbox()
    os.environ["AGENTMILL_SANDBOXES"] = str(args.at_once)  # let all of them start together
    cpu_before = time.process_time()
    bare_times = bare(args.runs)
    box_times, failed = sandboxed(args.runs)
    cpu_host = (time.process_time() - cpu_before) / args.runs
    (bare_med, bare_p90), (box_med, box_p90) = _quantiles(bare_times), _quantiles(box_times)
    print(f"trivial run_python, {args.runs} runs on {os.cpu_count()} cores "
          f"(load {os.getloadavg()[0]:.2f}):")
    print(f"  bare interpreter   median {bare_med * 1000:6.1f} ms   p90 {bare_p90 * 1000:6.1f} ms")
    print(f"  sandboxed          median {box_med * 1000:6.1f} ms   p90 {box_p90 * 1000:6.1f} ms"
          f"   ({failed} failed)")
    print(f"  sandbox overhead   median {(box_med - bare_med) * 1000:6.1f} ms"
          f"   ratio {box_med / bare_med:.2f}x   host-process CPU {cpu_host * 1000:.1f} ms/run")
    wall, n_failed, errors = asyncio.run(at_once(args.at_once))
    print(f"{args.at_once} sandboxes at once: {args.at_once - n_failed} ok, {n_failed} failed, "
          f"all done in {wall:.2f} s")
    for line in errors[:5]:
        print("  ", line)


if __name__ == "__main__":
    main()
