"""`python -m tests.slow_cli DELAY_S AGENTMILL_ARGS...`: the real CLI in a process of its own, with
a scripted model that takes DELAY_S per answer, so tests can kill or interrupt a run midway.

The model is installed for `backend: scripted, model: slow`, and one that answers every request
with text that is not JSON for `model: broken`, and one that makes vLLM's start-up noise for
`model: noisy`; everything else is the CLI as users run it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import warnings
from typing import Any

from pipelines.cli import app
from simulators.llm import registry
from simulators.llm.base import RawCompletion
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel


class SlowModel(ScriptedModel):
    def __init__(self, delay_s: float) -> None:
        super().__init__(name="slow", keep=10)
        self.delay_s = delay_s

    async def generate(self, messages: Any, schema: Any, sampling: Any) -> RawCompletion:
        await asyncio.sleep(self.delay_s)
        return await super().generate(messages, schema, sampling)


class NoisyModel(SlowModel):
    """Says what vLLM says at start-up: an engine start and ready event, a Python FutureWarning,
    a library logger's warning, and a line written straight to file descriptor 2 (as C code
    and engine subprocesses do)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s)
        self.name = "noisy"
        self._started = False

    async def generate(self, messages: Any, schema: Any, sampling: Any) -> RawCompletion:
        if not self._started:
            self._started = True
            event = {"engine_key": ModelConfig(backend="scripted", model="noisy").key(),
                     "engine_model": "scripted:noisy"}
            engine = logging.getLogger("agentmill.engine")
            engine.info("start", extra={**event, "engine_event": "start"})
            warnings.warn("Triton is not installed: noisy FutureWarning", FutureWarning,
                          stacklevel=1)
            os.write(2, b"W NUMA: noisy line on fd 2\n")
            logging.getLogger("vllm.noisy").warning("noisy library logger")  # no handler set
            await asyncio.sleep(0.2)
            engine.info("ready", extra={**event, "engine_event": "ready", "seconds": 0.2})
        return await super().generate(messages, schema, sampling)


def main() -> None:
    delay = float(sys.argv[1])
    registry.register(ModelConfig(backend="scripted", model="slow"), SlowModel(delay))
    registry.register(ModelConfig(backend="scripted", model="noisy"), NoisyModel(delay))
    broken = ScriptedModel(lambda request: "not JSON at all", name="broken")
    registry.register(ModelConfig(backend="scripted", model="broken"), broken)
    app(sys.argv[2:], prog_name="agentmill")


if __name__ == "__main__":
    main()
