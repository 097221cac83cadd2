"""One task as a live environment: the episode loop with the agent taken out.

In RL the policy is the agent. `Environment.reset` gives it the opening (the agent's system
message and the user's first turn) and the tools; `Environment.step` takes one assistant message
(text, or tool calls in OpenAI form) and answers with the tool simulator's results or the
simulated user's reply, until the episode ends; the last step carries the reward. The mill's own
episode (`simulators.episode.run_episode`) is this environment driven by an agent model, so the
roles, the world and the end rules exist once.

The reward is computed by a `scorer` handed in by the caller (`filters.reward.episode_scorer`),
since filters come after simulators in the layering. The tool path is pluggable: `make_tools`
builds the object that answers calls (default: a `ToolSimulator` over the task's world), so a
sandboxed executor can take its place.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.records import (
    AgentSpec,
    EndReason,
    FunctionCall,
    Message,
    Persona,
    RLTask,
    Task,
    ToolCall,
    ToolSpec,
    Trajectory,
)
from simulators.ask import RoleOutputError, Usage
from simulators.episode_config import EpisodeConfig
from simulators.llm.base import ChatModel, Sampling
from simulators.llm.errors import ModelError
from simulators.persona import make_persona
from simulators.tool_simulator import ToolSimulator, api_error
from simulators.user_simulator import UserSimulator
from simulators.workspace_tools import answerer, close_answerer, finish_answerer


class EpisodeError(RuntimeError):
    """An episode could not finish; carries the role and the last raw model output."""

    def __init__(
        self, message: str, role: str = "", raw_output: str = "", usage: Usage | None = None
    ) -> None:
        super().__init__(message)
        self.role = role
        self.raw_output = raw_output
        self.usage: Usage = usage or {}


class InvalidAction(ValueError):
    """A step's message is not an assistant message the environment can take."""


class EpisodeOver(RuntimeError):
    """`step` after the episode ended (or before `reset`)."""


def agent_system_message(agent: AgentSpec) -> Message:
    """The agent's system message: its prompt and its policy. The one builder, used by the
    episode, the environment and the `rl/` rows, so all three show the agent the same text."""
    text = agent.system_prompt
    if agent.policy:
        text = f"{text}\n\nPolicy: {agent.policy}"
    return Message(role="system", content=text)


@dataclass
class Score:
    """A finished episode's reward: the total, its named parts, and why."""

    total: float | None
    parts: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


class Scorer(Protocol):
    def __call__(
        self, trajectory: Trajectory, task: Task, tools: list[ToolSpec]
    ) -> Score: ...


class ToolAnswerer(Protocol):
    """What answers the agent's calls: the tool simulator, or anything that acts like it."""

    injected: list[Any]

    @property
    def state(self) -> dict[str, Any]: ...

    async def answer(self, call: ToolCall, usage: Usage) -> Message: ...


@dataclass
class Observation:
    """What `reset` gives the policy: the opening messages and the OpenAI `tools` entries."""

    messages: list[Message]
    tools: list[dict[str, Any]]


@dataclass
class StepResult:
    """What `step` answers: new messages, whether the episode ended, and then its reward."""

    messages: list[Message]
    done: bool
    reward: float | None = None
    reward_parts: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    end_reason: EndReason | None = None


def seeded(sampling: Sampling, seed: int, salt: int) -> Sampling:
    """`sampling` with a seed derived from the episode's seed and the request's place in it."""
    return sampling.model_copy(update={"seed": (seed * 1_000_003 + salt) % (2**31)})


def task_from_rl(row: RLTask) -> tuple[Task, AgentSpec]:
    """The Task and AgentSpec an `rl/` row was made from (ids kept), for an environment."""
    tools = [ToolSpec.model_validate(spec) for spec in row.tool_specs]
    if not tools:
        raise InvalidAction(f"rl row {row.id}: tool_specs is empty, nothing to simulate")
    system = "\n".join(m.content or "" for m in row.prompt if m.role == "system")
    agent = AgentSpec(
        id=row.agent_id,
        name=row.agent_id,
        domain=row.domain,
        system_prompt=system,
        tool_ids=[t.id for t in tools],
        tools=tools,
    )
    task = Task(
        id=row.task_id,
        agent_id=row.agent_id,
        goal=row.goal,
        user_knows=row.user_knows,
        user_withholds=row.user_withholds,
        difficulty=row.difficulty,
        rubric=row.rubric,
        initial_state=row.initial_state,
        expected_outcome=row.expected_outcome,
        workspace=row.workspace,
    )
    return task, agent


def parse_assistant_message(message: Message | dict[str, Any]) -> Message:
    """An assistant message from OpenAI form; arguments given as an object become JSON text and
    calls without an id get one. Raises InvalidAction naming the field."""
    if isinstance(message, Message):
        if message.role != "assistant":
            raise InvalidAction(f"message.role is {message.role!r}, expected 'assistant'")
        return message
    if not isinstance(message, dict):
        raise InvalidAction(f"message must be an object, not {type(message).__name__}")
    body = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls")}
    body.setdefault("role", "assistant")
    if body["role"] != "assistant":
        raise InvalidAction(f"message.role is {body['role']!r}, expected 'assistant'")
    calls = body.get("tool_calls") or None
    if calls is not None:
        if not isinstance(calls, list):
            raise InvalidAction("message.tool_calls must be a list")
        fixed = []
        for index, call in enumerate(calls):
            if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                raise InvalidAction(f"message.tool_calls[{index}] has no 'function' object")
            function = dict(call["function"])
            if not isinstance(function.get("name"), str):
                raise InvalidAction(f"message.tool_calls[{index}].function.name is missing")
            arguments = function.get("arguments", "{}")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            fixed.append(
                ToolCall(
                    id=str(call.get("id") or f"call_{index}"),
                    function=FunctionCall(name=function["name"], arguments=arguments),
                )
            )
        body["tool_calls"] = fixed
    else:
        body.pop("tool_calls", None)
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidAction("message.content must be a string or null")
    try:
        return Message.model_validate(body)
    except ValidationError as exc:
        raise InvalidAction(f"message: {exc.errors()[0]['msg']}") from exc


class Environment:
    """One task played by an outside policy: `reset`, then `step` until `done`.

    Deterministic for a fixed seed and fixed model answers: the persona, the user's mind
    change, the injected failures and every role's sampling seed derive from the seed.
    """

    def __init__(
        self,
        task: Task,
        agent: AgentSpec,
        user_model: ChatModel,
        tool_model: ChatModel,
        config: EpisodeConfig,
        *,
        scorer: Scorer | None = None,
        model_names: dict[str, str] | None = None,
        make_tools: Callable[[Environment, int], ToolAnswerer] | None = None,
        max_steps: int | None = None,
    ) -> None:
        self.task = task
        self.agent = agent
        self.user_model = user_model
        self.tool_model = tool_model
        self.config = config
        self.scorer = scorer
        self.model_names = model_names or {"user": user_model.name, "tool": tool_model.name}
        self.make_tools = make_tools or default_tools
        self.tools = [tool.openai_tool() for tool in agent.tools]
        self.max_steps = max_steps or 4 * config.max_turns * (config.max_tool_rounds + 1)
        self.messages: list[Message] = []
        self.usage: Usage = {}
        self.done = True
        self.seed = 0
        self.end_reason: EndReason | None = None
        self.trajectory: Trajectory | None = None
        self._user: UserSimulator | None = None
        self._tools: ToolAnswerer | None = None
        self._persona: Persona | None = None
        self._turns = 0
        self._tool_rounds = 0
        self._steps = 0

    @classmethod
    def from_rl(
        cls, row: RLTask, user_model: ChatModel, tool_model: ChatModel, config: EpisodeConfig,
        **kwargs: Any,
    ) -> Environment:
        task, agent = task_from_rl(row)
        return cls(task, agent, user_model, tool_model, config, **kwargs)

    @property
    def may_call_tools(self) -> bool:
        """Whether this turn still has tool rounds left (the mill's agent replies otherwise)."""
        return self._tool_rounds < self.config.max_tool_rounds

    @property
    def state(self) -> dict[str, Any]:
        """The world as the tools have left it so far."""
        return self._tools.state if self._tools is not None else self.task.initial_state

    @property
    def injected_faults(self) -> list[Any]:
        """The failures injected into this episode's tool answers so far."""
        return list(self._tools.injected) if self._tools is not None else []

    async def reset(
        self, seed: int = 0, persona: Persona | None = None, opening: str | None = None
    ) -> Observation:
        """Start a fresh episode (new world, new user) and return the opening and the tools.

        `opening` is the user's first message when the trainer already showed the policy one
        (verl's prompt); otherwise the simulated user writes it."""
        config = self.config
        self.seed = seed
        self.usage = {}
        self._persona = persona or make_persona(f"{seed}:{self.task.id}")
        changes_mind = random.Random(f"{seed}:mind").random() < config.mind_change_rate
        self._user = UserSimulator(
            self.user_model, self.task, self._persona, seeded(config.user, seed, 1),
            config.attempts, changes_mind,
        )
        self.close()
        self._tools = self.make_tools(self, seed)
        self.messages = [agent_system_message(self.agent)]
        self._turns, self._tool_rounds, self._steps = 1, 0, 0
        self.end_reason, self.trajectory, self.done = None, None, False
        if opening is None:
            opening = await self._roles(self._user.opening(self.usage))
        self.messages.append(Message(role="user", content=opening))
        return Observation(messages=list(self.messages), tools=self.tools)

    async def step(
        self, message: Message | dict[str, Any], final: bool = False
    ) -> StepResult:
        """Take one assistant message; `final` marks a reply the agent means to end on."""
        if self.done or self._user is None or self._tools is None:
            raise EpisodeOver("the episode is over; call reset first")
        action = parse_assistant_message(message)
        self._steps += 1
        self.messages.append(action)
        if action.tool_calls:
            answers = []
            for call in action.tool_calls:
                if self.may_call_tools:
                    answer = await self._roles(self._tools.answer(call, self.usage))
                else:
                    answer = Message(
                        role="tool", tool_call_id=call.id, name=call.function.name,
                        content=api_error(
                            429, "tool_budget_exhausted",
                            "no more tool calls this turn; reply to the user",
                        ),
                    )
                answers.append(answer)
            self.messages.extend(answers)
            self._tool_rounds += 1
            if self._steps >= self.max_steps:
                return await self._finish(answers, "turn_limit")
            return StepResult(messages=answers, done=False)
        if self._turns >= self.config.max_turns or self._steps >= self.max_steps:
            return await self._finish([], "agent_final" if final else "turn_limit")
        if final and not self.config.user_ends:
            return await self._finish([], "agent_final")
        text, user_done = await self._roles(self._user.reply(self.messages, self.usage))
        if user_done:
            return await self._finish([], "user_stop")
        reply = Message(role="user", content=text)
        self.messages.append(reply)
        self._turns += 1
        self._tool_rounds = 0
        return StepResult(messages=[reply], done=False)

    async def _roles(self, pending: Any) -> Any:
        """Await a user or tool role; its model failing becomes an EpisodeError."""
        try:
            return await pending
        except RoleOutputError as exc:
            self.done = True
            self.close()
            raise EpisodeError(str(exc), exc.role, exc.raw_output, self.usage) from exc
        except ModelError as exc:
            self.done = True
            self.close()
            raise EpisodeError(f"model error: {exc}", usage=self.usage) from exc

    def close(self) -> None:
        """Release what the tools hold (a task's workspace folder); the state stays readable."""
        if self._tools is not None:
            close_answerer(self._tools)

    async def _finish(self, messages: list[Message], end_reason: EndReason) -> StepResult:
        assert self._user is not None and self._tools is not None and self._persona is not None
        self.done = True
        await finish_answerer(self._tools)  # a workspace: final files and hidden tests
        self.end_reason = end_reason
        self.trajectory = Trajectory(
            task_id=self.task.id,
            agent_id=self.agent.id,
            persona_id=self._persona.id,
            domain=self.agent.domain,
            messages=self.messages,
            tools=self.tools,
            final_state=self._tools.state,
            token_counts=self.usage,
            models=self.model_names,
            seed=self.seed,
            end_reason=end_reason,
            turns=self._turns,
            injected_faults=self._tools.injected,
            user_style=self._persona.style,
            user_changed_mind=self._user.changed_mind,
        )
        result = StepResult(messages=messages, done=True, end_reason=end_reason)
        if self.scorer is not None:
            score = self.scorer(self.trajectory, self.task, self.agent.tools)
            result.reward, result.reward_parts, result.reasons = (
                score.total, score.parts, score.reasons
            )
        return result


def default_tools(env: Environment, seed: int) -> ToolAnswerer:
    """The tool simulator over the task's initial world, seeded like the mill's episodes; for a
    task that brings files, real workspace tools in a sandbox beside it."""
    config = env.config
    simulator = ToolSimulator(
        env.tool_model,
        env.agent.tools,
        env.task.initial_state,
        seeded(config.tool, seed, 2),
        config.attempts,
        failure_rate=config.failure_rate,
        seed=seed,
        allow_entrypoints=config.allow_entrypoints,
        entrypoint_timeout_s=config.entrypoint_timeout_s,
    )
    return answerer(simulator, env.task.workspace)
