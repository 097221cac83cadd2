"""Shared by the benchmarks: each measured size runs in a fresh process, whose peak memory is
its own."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak resident memory. `/proc/self/status` VmHWM starts afresh at exec;
    `getrusage`'s ru_maxrss does not (Linux keeps it across fork and exec, so a child would
    report its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, args: list[str], what: str) -> dict[str, Any]:
    """Run `python -m module args` from the project root and return the JSON object on the
    last line of its output; stop the benchmark, with its stderr, if it failed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        print(done.stderr[-3000:])
        raise SystemExit(f"{what} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def kib_per_extra(sizes: list[int], peaks: list[float]) -> float | None:
    """Peak memory added per extra item from the smallest size to the largest (None with
    fewer than two sizes)."""
    if len(peaks) < 2 or sizes[-1] <= sizes[0]:
        return None
    return (peaks[-1] - peaks[0]) * 1024 / (sizes[-1] - sizes[0])
