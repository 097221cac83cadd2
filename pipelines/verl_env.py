"""verl adapters: the tool simulator as a verl tool, the simulated user as a verl Interaction,
and the reward in verl's custom-reward signature, all over one `Environment` per rollout.

Checked against two verl interfaces, which differ:

- **verl 0.9.1** (the PyPI wheel, installed in the test environment; the tests load the tools
  with its `initialize_tools_from_config` and call them through its `ToolAgentLoop._call_tool`).
  Its `ToolAgentLoop` has no interaction: a rollout ends at the first assistant message without
  tool calls, so the policy plays against the tools alone. Per call it `create`s an instance
  with `create_kwargs` (the row's `extra_info.tools_kwargs[tool].create_kwargs`), `execute`s it
  with `agent_data` (`request_id`, `messages`, `extra_fields`) and `release`s it. Its reward
  loop hands `compute_score` the row's `extra_info` updated with the rollout's `extra_fields`.
- **verl commit b178a3c** (volcengine/verl, read from source: `verl/interactions/base.py`,
  `verl/tools/base_tool.py`, `verl/experimental/agent_loop/tool_agent_loop.py`; no release on
  PyPI ships `verl.interactions`). One `Interaction` per worker from `interaction_config_path`;
  per rollout `start_interaction(request_id, **interaction_kwargs)`, then after each assistant
  message without tool calls `generate_response(request_id, messages, **interaction_kwargs)` ->
  `(terminate, user_text, turn_score, metrics)`; a turn score joins the rollout's
  `turn_scores`, which reach `compute_score`'s `extra_info`. It never calls
  `finalize_interaction`. Tools are called as in 0.9.1.

Binding: the export writes, per row, `tools_kwargs[tool].create_kwargs = {run_dir, task_id,
seed}` for every tool. A rollout's environment is keyed by verl's `request_id`: the Interaction
opens it (b178a3c), or, when no Interaction did (0.9.1), the first tool call opens it from its
`create_kwargs`; every call checks that the live environment is the task its `create_kwargs`
name. Without `agent_data`, `create_kwargs['request_id']` is the fallback key.

Reward: with an Interaction, the user's last turn score is the environment's total, which
`compute_score` returns. Without one (0.9.1), the tools leave the rollout's messages, world and
injected failures in `extra_fields['agentmill_rollout']`, and `compute_score` scores them with
the agent's final words (the response minus tool calls and answers) by the same scorer.
Environments live in a bounded per-process table (oldest dropped first), since verl never
finalizes them. With verl importable the classes subclass its bases (`BaseInteraction` only
where it exists); otherwise stand-ins with the same signatures keep them usable and testable.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pipelines.envs import RunEnvironments
from schemas.records import InjectedFault, Message, Trajectory
from simulators.environment import (
    Environment,
    EpisodeError,
    EpisodeOver,
    InvalidAction,
    agent_system_message,
)
from simulators.tool_simulator import api_error

try:  # verl's real tool base (0.9.1 and b178a3c alike)
    from verl.tools.base_tool import BaseTool  # type: ignore[import-not-found]
    from verl.tools.schemas import ToolResponse  # type: ignore[import-not-found]
except ImportError:  # stand-ins with verl's signatures

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

try:  # only verl trees that have interactions (b178a3c; not the 0.9.1 wheel)
    from verl.interactions.base import BaseInteraction  # type: ignore[import-not-found]
except ImportError:

    class BaseInteraction:  # type: ignore[no-redef]
        def __init__(self, config: dict[str, Any]) -> None:
            self.config = config
            self.name: str = config.get("name", "interaction_agent")


INTERACTION_NAME = "agentmill_user"
ROLLOUT_FIELD = "agentmill_rollout"
"""The `extra_fields` key where tools leave a tool-only rollout for `compute_score`."""
MAX_LIVE_ROLLOUTS = 4096


@dataclass
class _Rollout:
    env: Environment
    lock: asyncio.Lock
    run_dir: str
    run_config: str | None
    seen: int = 0
    """How many of verl's messages the environment has taken in (Interaction)."""
    opened_by_tool: bool = False
    """No Interaction plays the user: `compute_score` scores the tools' record."""


_live: OrderedDict[str, _Rollout] = OrderedDict()
_opening: dict[str, asyncio.Future[_Rollout]] = {}
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


async def _open(
    request_id: str, run_dir: str, run_config: str | None, task_id: Any, seed: Any,
    opening: str | None, *, by_tool: bool,
) -> _Rollout:
    """Open `task_id`'s environment for the rollout `request_id`, once even when calls of one
    turn arrive together (verl gathers them)."""
    pending = _opening.get(request_id)
    if pending is not None:
        return await asyncio.shield(pending)
    future: asyncio.Future[_Rollout] = asyncio.get_running_loop().create_future()
    _opening[request_id] = future
    try:
        envs = _environments(run_dir, run_config)
        if task_id not in envs.tasks:
            raise KeyError(f"{run_dir}: no rl task {task_id!r}")
        env = envs.make(str(task_id))
        # verl bounds the turns itself; tool calls are not limited per turn here.
        env.config = env.config.model_copy(update={"max_tool_rounds": 1 << 16})
        env.max_steps = 1 << 16
        await env.reset(int(seed or 0), opening=opening)
        rollout = _Rollout(env, asyncio.Lock(), run_dir, run_config, seen=2,
                           opened_by_tool=by_tool)
        _remember(request_id, rollout)
        future.set_result(rollout)
        return rollout
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
        raise
    finally:
        _opening.pop(request_id, None)


class AgentmillInteraction(BaseInteraction):
    """The simulated user of a task (verl b178a3c); opens the rollout's environment.

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
        task_id = kwargs.get("task_id")
        if task_id not in _environments(self.run_dir, self.run_config).tasks:
            raise KeyError(f"{self.run_dir}: no rl task {task_id!r} (interaction_kwargs.task_id)")
        await _open(instance_id, self.run_dir, self.run_config, task_id, kwargs.get("seed"),
                    kwargs.get("goal"), by_tool=False)
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


def _first_user_text(agent_data: Any) -> str | None:
    """The rollout's opening user turn (the row's goal) from verl's `agent_data.messages`."""
    for message in getattr(agent_data, "messages", None) or []:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


@dataclass
class _Binding:
    """What one tool instance's `create_kwargs` bind it to."""

    run_dir: str | None
    task_id: str | None
    seed: int
    request_id: str | None


class AgentmillTool(BaseTool):
    """One tool of the run, answered by the rollout's tool simulator (its world, its faults).

    Config (tool YAML): `type: native`, `run_dir`, optionally `config`. `create_kwargs` (from
    the row's `tools_kwargs`): `task_id`, `seed`, optionally `run_dir` and `request_id`."""

    def __init__(self, config: dict[str, Any], tool_schema: Any) -> None:
        super().__init__(config, tool_schema)
        self.run_dir: str | None = config.get("run_dir")
        self.run_config: str | None = config.get("config")
        self._bindings: dict[str, _Binding] = {}

    async def create(
        self, instance_id: str | None = None, **kwargs: Any
    ) -> tuple[str, ToolResponse]:
        create_kwargs = kwargs.get("create_kwargs") or {}
        instance_id = instance_id or uuid.uuid4().hex
        task_id = create_kwargs.get("task_id")
        self._bindings[instance_id] = _Binding(
            run_dir=create_kwargs.get("run_dir") or self.run_dir,
            task_id=str(task_id) if task_id is not None else None,
            seed=int(create_kwargs.get("seed") or 0),
            request_id=create_kwargs.get("request_id"),
        )
        return instance_id, ToolResponse()

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        agent_data = kwargs.get("agent_data")
        binding = self._bindings.get(instance_id) or _Binding(self.run_dir, None, 0, None)
        request_id = getattr(agent_data, "request_id", None) or binding.request_id
        rollout = _live.get(request_id) if request_id else None
        if rollout is None and request_id and binding.task_id and binding.run_dir:
            try:  # no Interaction opened it (verl 0.9.1): the tools play the task alone
                rollout = await _open(
                    request_id, binding.run_dir, self.run_config, binding.task_id,
                    binding.seed, _first_user_text(agent_data), by_tool=True,
                )
            except (KeyError, EpisodeError) as exc:
                return _error(404, "unknown_task", str(exc))
        if rollout is None:
            return _error(503, "no_environment", "no live agentmill environment for this "
                          "rollout: give the row's tools_kwargs create_kwargs (task_id) or "
                          "configure the agentmill_user interaction")
        if binding.task_id is not None and binding.task_id != rollout.env.task.id:
            return _error(409, "wrong_environment", f"this call is bound to task "
                          f"{binding.task_id!r}, the rollout plays {rollout.env.task.id!r}")
        call = {"tool_calls": [{"id": f"call_{instance_id[:12]}", "function": {
            "name": self.name, "arguments": json.dumps(parameters)}}]}
        async with rollout.lock:
            try:
                result = await rollout.env.step(call)
            except (EpisodeOver, InvalidAction) as exc:
                return _error(409, "episode_over", str(exc))
            except EpisodeError as exc:
                return _error(502, "tool_simulator_failed", str(exc))
            if rollout.opened_by_tool:
                _leave_record(agent_data, rollout)
        return ToolResponse(text=result.messages[0].content), 0.0, {}

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        return 0.0

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._bindings.pop(instance_id, None)


def _error(code: int, kind: str, message: str) -> tuple[ToolResponse, float, dict[str, Any]]:
    return ToolResponse(text=api_error(code, kind, message)), 0.0, {}


def _leave_record(agent_data: Any, rollout: _Rollout) -> None:
    """Put the tool-only rollout where verl's reward loop will hand it to `compute_score`."""
    fields = getattr(agent_data, "extra_fields", None)
    if not isinstance(fields, dict):
        return
    env = rollout.env
    fields[ROLLOUT_FIELD] = json.dumps({
        "run_dir": rollout.run_dir,
        "config": rollout.run_config,
        "task_id": env.task.id,
        "seed": env.seed,
        "messages": [m.model_dump(exclude_none=True) for m in env.messages],
        "final_state": env.state,
        "injected_faults": [f.model_dump() for f in env.injected_faults],
    })


_TOOL_CALL_TEXT = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


def agent_words(solution_str: str, answers: list[str]) -> str:
    """What the agent said in a decoded verl response: the text without the tool answers
    (verl renders them into the response) and without hermes `<tool_call>` blocks."""
    text = solution_str
    for answer in sorted(set(answers), key=len, reverse=True):
        if answer:
            text = text.replace(answer, " ")
    return _TOOL_CALL_TEXT.sub(" ", text).strip()


def _verl_has_interactions() -> bool:
    try:
        return importlib.util.find_spec("verl.interactions") is not None
    except (ImportError, ValueError):
        return False


def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None
) -> dict[str, Any]:
    """verl's custom reward: the environment's total (outcome + process).

    With the Interaction, the user's last turn score. Without it (verl 0.9.1's tool-only loop),
    the rollout the tools left in `extra_fields` (or, when the policy made no call at all, the
    untouched world) scored with the agent's final words; a rollout with calls whose record
    did not arrive (a reward path that drops `extra_fields`) is not guessed at: 0, unfinished.
    A rollout cut off before the user ended it (b178a3c) has no final world, so no outcome: it
    scores 0 and says so."""
    info = extra_info or {}
    scores = [s for s in info.get("turn_scores") or [] if s is not None]
    if scores:
        return {"score": float(scores[-1]), "finished": True}
    record = info.get(ROLLOUT_FIELD)
    if isinstance(record, str):
        return _score_record(json.loads(record), solution_str)
    binding = _row_binding(info)
    turns = info.get("num_turns")
    no_calls = turns is None or int(turns) <= 2  # 0.9.1: system+user, one assistant turn
    if binding is not None and no_calls and not _verl_has_interactions():
        return _score_record(binding, solution_str)
    return {"score": 0.0, "finished": False}


def _row_binding(info: dict[str, Any]) -> dict[str, Any] | None:
    """A tool-only rollout with no call: the row's binding, no messages, the initial world."""
    for kwargs in (info.get("tools_kwargs") or {}).values():
        create = (kwargs or {}).get("create_kwargs") or {}
        if create.get("task_id") and create.get("run_dir"):
            return {**create, "opening": (info.get("interaction_kwargs") or {}).get("goal")}
    return None


def _score_record(record: dict[str, Any], solution_str: str) -> dict[str, Any]:
    envs = _environments(record["run_dir"], record.get("config"))
    task, agent = envs.task(str(record["task_id"]))
    messages = [Message.model_validate(m) for m in record.get("messages") or []]
    if not messages:
        messages = [agent_system_message(agent),
                    Message(role="user", content=record.get("opening") or task.goal)]
    answers = [m.content or "" for m in messages if m.role == "tool"]
    messages.append(Message(role="assistant", content=agent_words(solution_str, answers)))
    trajectory = Trajectory(
        task_id=task.id, agent_id=agent.id, persona_id="verl", domain=agent.domain,
        messages=messages, tools=[t.openai_tool() for t in agent.tools],
        final_state=record.get("final_state", task.initial_state),
        seed=int(record.get("seed") or 0), end_reason="agent_final", turns=1,
        injected_faults=[InjectedFault.model_validate(f)
                         for f in record.get("injected_faults") or []],
    )
    score = envs.scorer()(trajectory, task, agent.tools)
    return {"score": float(score.total or 0.0), "finished": True}
