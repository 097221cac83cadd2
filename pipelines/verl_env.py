"""verl adapters: the simulated user as a verl Interaction, the tool simulator as a verl tool,
and the reward in verl's custom-reward signature, all over one `Environment` per rollout.

Written against verl's interfaces at commit b178a3c (volcengine/verl; `verl/interactions/base.py`,
`verl/tools/base_tool.py`, `verl/experimental/agent_loop/tool_agent_loop.py`), read from source:
the verl 0.9.1 wheel on PyPI no longer ships `verl.interactions`. What that agent loop does:

- one `Interaction` object per worker, from `interaction_config_path`; per rollout it calls
  `start_interaction(request_id, **interaction_kwargs)`, then after every assistant message
  without tool calls `generate_response(request_id, messages, **interaction_kwargs)` ->
  `(terminate, user_text, turn_score, metrics)`; a turn score that is not None is appended to
  the rollout's `turn_scores`. It never calls `finalize_interaction`.
- one global tool list from `tool_config_path` (per-row tools are ignored); per call it
  `create(create_kwargs=...)`s an instance, `execute(instance_id, arguments,
  agent_data=...)`s it and `release`s it; `agent_data.request_id` is the rollout's request id.
- its reward loop hands `compute_score(data_source, solution_str, ground_truth, extra_info)`
  the row's `extra_info` updated with the loop's extra fields (`turn_scores`, `tool_rewards`).

So the Interaction opens the rollout's environment under the request id, the tool finds it by
`agent_data.request_id` (falling back to `create_kwargs`' `request_id`), and the Interaction's
last turn score is the environment's total reward, which `compute_score` returns. Environments
live in a bounded per-process table (oldest dropped first), since verl never finalizes them.
When verl itself is importable the classes subclass its bases; otherwise stand-ins with the same
signatures keep them usable and testable.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pipelines.envs import RunEnvironments
from simulators.environment import Environment, EpisodeError, EpisodeOver, InvalidAction
from simulators.tool_simulator import api_error

try:  # verl's real bases when installed
    from verl.interactions.base import BaseInteraction  # type: ignore[import-not-found]
    from verl.tools.base_tool import BaseTool  # type: ignore[import-not-found]
    from verl.tools.schemas import ToolResponse  # type: ignore[import-not-found]
except ImportError:  # stand-ins with verl b178a3c's signatures

    class BaseInteraction:  # type: ignore[no-redef]
        def __init__(self, config: dict[str, Any]) -> None:
            self.config = config
            self.name: str = config.get("name", "interaction_agent")

    @dataclass
    class ToolResponse:  # type: ignore[no-redef]
        text: str | None = None
        image: list[Any] | None = None
        video: list[Any] | None = None

    class BaseTool:  # type: ignore[no-redef]
        def __init__(self, config: dict[str, Any], tool_schema: Any) -> None:
            self.config = config
            self.tool_schema = tool_schema
            function = (
                tool_schema["function"] if isinstance(tool_schema, dict) else tool_schema.function
            )
            self.name = function["name"] if isinstance(function, dict) else function.name


INTERACTION_NAME = "agentmill_user"
MAX_LIVE_ROLLOUTS = 4096


@dataclass
class _Rollout:
    env: Environment
    lock: asyncio.Lock
    seen: int = 0
    """How many of verl's messages the environment has taken in."""


_live: OrderedDict[str, _Rollout] = OrderedDict()
_runs: dict[tuple[str, str | None], RunEnvironments] = {}


def _environments(run_dir: str, config: str | None = None) -> RunEnvironments:
    key = (run_dir, config)
    if key not in _runs:
        envs = RunEnvironments.open(run_dir, config)
        envs.require_sandbox()  # tasks with files and no sandbox here: say so, once, loudly
        _runs[key] = envs
    return _runs[key]


def _remember(request_id: str, rollout: _Rollout) -> None:
    _live[request_id] = rollout
    _live.move_to_end(request_id)
    while len(_live) > MAX_LIVE_ROLLOUTS:
        _live.popitem(last=False)[1].env.close()


def _forget(request_id: str) -> None:
    rollout = _live.pop(request_id, None)
    if rollout is not None:
        rollout.env.close()


def live_rollouts() -> int:
    return len(_live)


class AgentmillInteraction(BaseInteraction):
    """The simulated user of a task; opens the rollout's environment (world, tools, reward).

    Config (interaction YAML): `run_dir` (the run whose `rl/` tasks the data came from) and
    optionally `config` (a YAML over that run's config). Kwargs per row
    (`extra_info.interaction_kwargs`): `task_id`, `goal`, and optionally `seed`.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.run_dir = str(config["run_dir"])
        self.run_config = config.get("config")

    async def start_interaction(
        self, instance_id: str | None = None, **kwargs: Any
    ) -> str:
        instance_id = instance_id or uuid.uuid4().hex
        envs = _environments(self.run_dir, self.run_config)
        task_id = kwargs.get("task_id")
        if task_id not in envs.tasks:
            raise KeyError(f"{self.run_dir}: no rl task {task_id!r} (interaction_kwargs.task_id)")
        env = envs.make(str(task_id))
        # verl bounds the turns itself; tool calls are not limited per turn here.
        env.config = env.config.model_copy(update={"max_tool_rounds": 1 << 16})
        env.max_steps = 1 << 16
        await env.reset(int(kwargs.get("seed", 0)), opening=kwargs.get("goal"))
        _remember(instance_id, _Rollout(env=env, lock=asyncio.Lock(), seen=2))
        return instance_id

    async def generate_response(
        self, instance_id: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> tuple[bool, str, float | None, dict[str, Any]]:
        rollout = _live.get(instance_id)
        if rollout is None:
            return True, "", 0.0, {"error": "unknown or expired rollout"}
        async with rollout.lock:
            reply = _last_assistant_text(messages[rollout.seen:])
            rollout.seen = len(messages)
            try:
                result = await rollout.env.step({"role": "assistant", "content": reply}, final=True)
            except (EpisodeOver, InvalidAction, EpisodeError) as exc:
                _forget(instance_id)
                return True, "", 0.0, {"error": str(exc)}
        if result.done:
            _forget(instance_id)
            return True, "", result.reward or 0.0, {
                "reward_parts": result.reward_parts, "end_reason": result.end_reason,
            }
        return False, result.messages[-1].content or "", None, {}

    async def calculate_score(self, instance_id: str | None = None, **kwargs: Any) -> float:
        return 0.0  # the reward comes with the last turn (turn_scores) and compute_score

    async def finalize_interaction(self, instance_id: str | None = None, **kwargs: Any) -> None:
        if instance_id is not None:
            _forget(instance_id)


def _last_assistant_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "assistant":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class AgentmillTool(BaseTool):
    """One tool of the run, answered by the rollout's tool simulator (its world, its faults)."""

    async def create(
        self, instance_id: str | None = None, **kwargs: Any
    ) -> tuple[str, ToolResponse]:
        create_kwargs = kwargs.get("create_kwargs") or {}
        self._pending = getattr(self, "_pending", {})
        instance_id = instance_id or uuid.uuid4().hex
        self._pending[instance_id] = create_kwargs.get("request_id")
        return instance_id, ToolResponse()

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        agent_data = kwargs.get("agent_data")
        request_id = getattr(agent_data, "request_id", None) or getattr(
            self, "_pending", {}
        ).get(instance_id)
        rollout = _live.get(request_id) if request_id else None
        if rollout is None:
            body = api_error(503, "no_environment", "no live agentmill environment for this "
                             "rollout: is the agentmill_user interaction configured?")
            return ToolResponse(text=body), 0.0, {}
        call = {"tool_calls": [{"id": f"call_{instance_id[:12]}", "function": {
            "name": self.name, "arguments": json.dumps(parameters)}}]}
        async with rollout.lock:
            try:
                result = await rollout.env.step(call)
            except (EpisodeOver, InvalidAction) as exc:
                return ToolResponse(text=api_error(409, "episode_over", str(exc))), 0.0, {}
            except EpisodeError as exc:
                return ToolResponse(text=api_error(502, "tool_simulator_failed", str(exc))), 0.0, {}
        return ToolResponse(text=result.messages[0].content), 0.0, {}

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        return 0.0

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        getattr(self, "_pending", {}).pop(instance_id, None)


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None
) -> dict[str, Any]:
    """verl's custom reward: the environment's total (outcome + process) from the rollout's last
    turn score. A rollout verl cut off before the user ended it has no final world, so no
    outcome: it scores 0 and says so."""
    scores = [s for s in (extra_info or {}).get("turn_scores") or [] if s is not None]
    if scores:
        return {"score": float(scores[-1]), "finished": True}
    return {"score": 0.0, "finished": False}


def verl_configs(run_dir: str, tools: list[dict[str, Any]], config: str | None = None) -> tuple[
    dict[str, Any], dict[str, Any]
]:
    """The interaction and tool config files verl's multi-turn rollout reads (as dicts)."""
    interaction = {"interaction": [{
        "name": INTERACTION_NAME,
        "class_name": f"{__name__}.AgentmillInteraction",
        "config": {"run_dir": run_dir, **({"config": config} if config else {})},
    }]}
    tool_config = {"tools": [
        {"class_name": f"{__name__}.AgentmillTool", "config": {"type": "native"},
         "tool_schema": tool}
        for tool in tools
    ]}
    return interaction, tool_config
