"""Two worker processes share one real vLLM CPU server serving the embedded model (e2e).

The engine starts once for both, answers both with constrained JSON, and neither it nor any of
its processes (the API server, the engine core) is left once the workers are gone, although one
of them exits without any cleanup.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest

from simulators.llm.config import ModelConfig
from simulators.llm.engine_server import starts
from simulators.llm.server_backend import engine_folder
from tests.test_shared_engine import client, running, served, state, stopped, wait_until

pytestmark = pytest.mark.e2e

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (the server's group holds its engine core too)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def test_two_workers_share_one_vllm_cpu_server(tmp_path: Path) -> None:
    config = ModelConfig(backend="vllm-server", engine_dir=str(tmp_path), engine_linger_s=1.0,
                         engine_start_s=300)
    began = time.monotonic()
    workers = [client(config, 2, 10.0, how, json.dumps(SCHEMA)) for how in ("close", "exit")]
    urls = []
    for worker in workers:
        for answer in served(worker):
            jsonschema.validate(answer, SCHEMA)  # constrained decoding reached the server
        assert worker.stdout is not None
        urls.append(worker.stdout.readline().split()[1])
    ready = time.monotonic() - began
    supervisor, server = running(config)
    assert group_members(server), "the server and its engine core run in the server's group"

    assert urls == [state(config)["url"] + "/chat/completions"] * 2  # type: ignore[index]
    assert starts(engine_folder(config)) == 1
    for worker in workers:
        assert worker.wait(timeout=60) == 0
    wait_until(lambda: stopped(config, [supervisor, server]), timeout=60)
    assert group_members(server) == [], "no vLLM process outlives the workers"
    print(f"engine starts: {starts(engine_folder(config))}; both served after {ready:.0f} s; "
          f"stopped {time.monotonic() - began:.0f} s after the start")
