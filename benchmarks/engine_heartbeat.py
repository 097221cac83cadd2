"""Does a client's lease heartbeat keep time while its event loop is busy? (`vllm-server`)

A client process (`SharedVLLMChatModel` against the stand-in server of the tests, as
`tests/test_shared_engine.py` uses) keeps `--in-flight` requests running for `--seconds`, and
burns `--burn-ms` of pure-Python CPU on the loop after each answer, so the loop is never idle.
This process, outside it, samples the mtime of its lease file every 10 ms and prints the longest
gap between two refreshes beside the interval they should keep and the timeout after which the
supervisor would drop the lease.

    python -m benchmarks.engine_heartbeat [--seconds 20] [--in-flight 512] [--burn-ms 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from simulators.llm.config import ModelConfig  # noqa: E402
from simulators.llm.engine_server import BEATS_PER_TIMEOUT  # noqa: E402
from simulators.llm.server_backend import engine_folder  # noqa: E402

CLIENT = """
import asyncio, json, sys, time
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.server_backend import SharedVLLMChatModel

config = ModelConfig.model_validate_json(sys.argv[1])
seconds, in_flight, burn = float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) / 1000


async def main() -> None:
    model = SharedVLLMChatModel(config)
    await model.generate([{"role": "user", "content": "warm"}], None, Sampling())
    print("ready", flush=True)
    end = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            await model.generate([{"role": "user", "content": "x"}], None, Sampling())
            spin = time.perf_counter() + burn
            while time.perf_counter() < spin:  # pure Python on the loop, holding the GIL
                json.dumps({"k": list(range(50))})
            done += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    print("done", done, flush=True)
    await model.close()


asyncio.run(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--in-flight", type=int, default=512)
    parser.add_argument("--burn-ms", type=float, default=2.0)
    parser.add_argument("--lease-timeout", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        config = ModelConfig(
            backend="vllm-server", model="fake-model", engine_dir=scratch, engine_linger_s=0.0,
            engine_lease_timeout_s=args.lease_timeout, max_in_flight=args.in_flight,
            server_command=[sys.executable, "-m", "tests.fake_engine_server", "{port}",
                            os.devnull, "0"],
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, config.model_dump_json(), str(args.seconds),
             str(args.in_flight), str(args.burn_ms)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        leases = engine_folder(config) / "leases"
        refreshes: list[float] = []
        began = time.monotonic()
        while client.poll() is None and time.monotonic() - began < args.seconds:
            for lease in leases.iterdir():
                try:
                    mtime = lease.stat().st_mtime
                except FileNotFoundError:
                    continue
                if not refreshes or mtime != refreshes[-1]:
                    refreshes.append(mtime)
            time.sleep(0.01)
        line = client.stdout.readline().split()
        client.wait(timeout=60)
        gaps = [b - a for a, b in itertools.pairwise(refreshes)]
        requests = int(line[1]) if len(line) == 2 else 0
        print(json.dumps({
            "in_flight": args.in_flight, "burn_ms_per_answer": args.burn_ms,
            "requests": requests, "requests_per_s": round(requests / args.seconds, 1),
            "heartbeat_s": args.lease_timeout / BEATS_PER_TIMEOUT,
            "refreshes": len(refreshes), "max_gap_s": round(max(gaps, default=0.0), 3),
            "lease_timeout_s": args.lease_timeout,
        }))


if __name__ == "__main__":
    main()
