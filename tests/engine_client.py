"""`python -m tests.engine_client CONFIG_JSON REQUESTS HOLD_S [close|exit] [SCHEMA_JSON]`: one
worker process of the shared-engine tests. It sends REQUESTS requests through the `vllm-server`
backend (constrained to SCHEMA_JSON if given), prints `served <json answers>` and `url <server>`,
holds its lease HOLD_S seconds, then closes its client (`close`), sends the requests once more
and closes (`again`), or just exits (`exit`: no cleanup, like a crashed worker).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from simulators.llm import registry
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig


async def main(
    config: ModelConfig, requests: int, hold_s: float, how: str, schema: dict[str, Any] | None
) -> None:
    model = registry.get_model(config)
    answers = []
    for index in range(requests):
        said = f"{os.getpid()}:{index}"
        sampling = Sampling(seed=index, max_tokens=64)
        raw = await model.generate([{"role": "user", "content": said}], schema, sampling)
        answers.append(raw.text)
    print("served", json.dumps(answers), flush=True)
    print("url", getattr(model, "_url", ""), flush=True)
    time.sleep(hold_s)
    if how == "again":  # a second round, e.g. after the test killed the server's supervisor
        again = []
        for index in range(requests):
            said = f"{os.getpid()}:again{index}"
            raw = await model.generate([{"role": "user", "content": said}], schema,
                                       Sampling(seed=index, max_tokens=64))
            again.append(raw.text)
        print("served", json.dumps(again), flush=True)
    if how in ("close", "again"):
        await model.close()
    else:
        os._exit(0)


if __name__ == "__main__":
    asyncio.run(main(
        ModelConfig.model_validate_json(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
        sys.argv[4] if len(sys.argv) > 4 else "close",
        json.loads(sys.argv[5]) if len(sys.argv) > 5 else None,
    ))
