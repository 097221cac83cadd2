"""`python -m tests.slow_cli DELAY_S AGENTMILL_ARGS...`: the real CLI in a process of its own, with
a scripted model that takes DELAY_S per answer, so tests can kill or interrupt a run midway.

The model is installed for `backend: scripted, model: slow`, and one that answers every request
with text that is not JSON for `model: broken`; everything else is the CLI as users run it.
"""

from __future__ import annotations

import asyncio
import sys
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


def main() -> None:
    delay = float(sys.argv[1])
    registry.register(ModelConfig(backend="scripted", model="slow"), SlowModel(delay))
    broken = ScriptedModel(lambda request: "not JSON at all", name="broken")
    registry.register(ModelConfig(backend="scripted", model="broken"), broken)
    app(sys.argv[2:], prog_name="agentmill")


if __name__ == "__main__":
    main()
