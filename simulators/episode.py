"""One episode: the simulated user, the agent and the tool simulator play against each other.

The agent's request always starts with its system prompt and its tool list, byte-identical across
every turn and every episode of that agent, so an engine's prefix cache serves them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from schemas.records import (
    AgentSpec,
    EndReason,
    Message,
    Persona,
    Task,
    Trajectory,
)
from simulators.ask import RoleOutputError, Usage, ask
from simulators.llm.base import ChatModel, Completion, ModelError, Sampling
from simulators.tool_simulator import ToolSimulator
from simulators.user_simulator import UserSimulator
from simulators.workspace_tools import WorkspaceTools, answerer, close, finish


class EpisodeConfig(BaseModel):
    """Limits and sampling for the episode loop."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=3, ge=1, description="User turns before the episode stops.")
    max_tool_rounds: int = Field(
        default=3, ge=0, description="Agent tool-call rounds per user turn before it must reply."
    )
    attempts: int = Field(default=3, ge=1, description="Tries per model answer before failing.")
    user: Sampling = Sampling(temperature=0.8, max_tokens=96)
    agent: Sampling = Sampling(temperature=0.6, max_tokens=256)
    tool: Sampling = Sampling(temperature=0.5, max_tokens=256)
    failure_rate: float = Field(
        default=0.1, ge=0.0, le=1.0,
        description="Share of valid tool calls answered with an injected failure (seeded): not "
        "found, permission denied, rate limited, timeout, partial or empty result.",
    )
    mind_change_rate: float = Field(
        default=0.2, ge=0.0, le=1.0,
        description="Share of episodes whose user changes their mind once (seeded).",
    )
    user_ends: bool = Field(
        default=True,
        description="The user, not the agent, ends the episode: after the agent's final reply "
        "the user says whether they are done.",
    )
    allow_entrypoints: bool = Field(
        default=False,
        description="Run tools whose spec names an `entrypoint` (package.module:function) in "
        "process instead of simulating them. Off by default: only turn it on for spec files "
        "you trust, since it imports and runs the code they name.",
    )
    entrypoint_timeout_s: float = Field(
        default=10.0, gt=0, description="Time limit per entrypoint call; a late call fails."
    )


@dataclass
class RoleModels:
    """Which client plays which role; equal configs share one client."""

    user: ChatModel
    agent: ChatModel
    tool: ChatModel
    names: dict[str, str] = field(default_factory=dict)

    def model_names(self) -> dict[str, str]:
        return self.names or {
            "user": self.user.name,
            "agent": self.agent.name,
            "tool": self.tool.name,
        }


class EpisodeError(RuntimeError):
    """An episode could not finish; carries the role and the last raw model output."""

    def __init__(
        self, message: str, role: str = "", raw_output: str = "", usage: Usage | None = None
    ) -> None:
        super().__init__(message)
        self.role = role
        self.raw_output = raw_output
        self.usage: Usage = usage or {}


def agent_system_message(agent: AgentSpec) -> Message:
    text = agent.system_prompt
    if agent.policy:
        text = f"{text}\n\nPolicy: {agent.policy}"
    return Message(role="system", content=text)


async def run_episode(
    task: Task,
    agent: AgentSpec,
    persona: Persona,
    models: RoleModels,
    config: EpisodeConfig,
    seed: int,
) -> Trajectory:
    """Play one episode to its end and return the trajectory, or raise EpisodeError."""
    usage: Usage = {}
    tools = [tool.openai_tool() for tool in agent.tools]
    changes_mind = random.Random(f"{seed}:mind").random() < config.mind_change_rate
    user = UserSimulator(
        models.user, task, persona, _seeded(config.user, seed, 1), config.attempts, changes_mind
    )
    simulator = ToolSimulator(
        models.tool,
        agent.tools,
        task.initial_state,
        _seeded(config.tool, seed, 2),
        config.attempts,
        failure_rate=config.failure_rate,
        seed=seed,
        allow_entrypoints=config.allow_entrypoints,
        entrypoint_timeout_s=config.entrypoint_timeout_s,
    )
    # A task with files gets real workspace tools in a sandbox beside the simulated ones.
    simulator = answerer(simulator, task.workspace)
    messages: list[Message] = [agent_system_message(agent)]
    try:
        messages.append(Message(role="user", content=await user.opening(usage)))
        turns = 1
        end_reason: EndReason
        while True:
            final = await _agent_turn(messages, tools, models.agent, simulator, usage, config, seed)
            if turns >= config.max_turns:
                end_reason = "agent_final" if final else "turn_limit"
                break
            if final and not config.user_ends:
                end_reason = "agent_final"
                break
            text, done = await user.reply(messages, usage)
            if done:
                end_reason = "user_stop"
                break
            messages.append(Message(role="user", content=text))
            turns += 1
        await finish(simulator)
    except RoleOutputError as exc:
        raise EpisodeError(str(exc), exc.role, exc.raw_output, usage) from exc
    except ModelError as exc:
        raise EpisodeError(f"model error: {exc}", usage=usage) from exc
    finally:
        close(simulator)
    return Trajectory(
        task_id=task.id,
        agent_id=agent.id,
        persona_id=persona.id,
        domain=agent.domain,
        messages=messages,
        tools=tools,
        final_state=simulator.state,
        token_counts=usage,
        models=models.model_names(),
        seed=seed,
        end_reason=end_reason,
        turns=turns,
        injected_faults=simulator.injected,
        user_style=persona.style,
        user_changed_mind=user.changed_mind,
    )


async def _agent_turn(
    messages: list[Message],
    tools: list[dict],
    model: ChatModel,
    simulator: ToolSimulator | WorkspaceTools,
    usage: Usage,
    config: EpisodeConfig,
    seed: int,
) -> bool:
    """Let the agent call tools until it replies; True when it marks its reply final."""
    for round_index in range(config.max_tool_rounds + 1):
        may_call = round_index < config.max_tool_rounds
        sampling = _seeded(config.agent, seed, 100 + len(messages))
        completion = await ask(
            model, "agent", usage, messages, sampling,
            tools=tools if may_call else None,
            schema=None if may_call else FINAL_REPLY_SCHEMA,
            attempts=config.attempts,
            check=_reply_not_empty,
        )
        if completion.tool_calls:
            messages.append(Message(role="assistant", tool_calls=completion.tool_calls))
            for call in completion.tool_calls:
                messages.append(await simulator.answer(call, usage))
            continue
        text = completion.text if may_call else str(completion.parsed["content"])
        messages.append(Message(role="assistant", content=text.strip()))
        parsed = completion.parsed if isinstance(completion.parsed, dict) else {}
        return bool(parsed.get("final", False))
    return False


FINAL_REPLY_SCHEMA = {
    "type": "object",
    "properties": {"content": {"type": "string", "minLength": 1}, "final": {"type": "boolean"}},
    "required": ["content", "final"],
    "additionalProperties": False,
}


def _reply_not_empty(completion: Completion) -> str | None:
    if completion.tool_calls:
        return None
    text = completion.text
    if isinstance(completion.parsed, dict) and "content" in completion.parsed:
        text = str(completion.parsed["content"])
    return None if text.strip() else "empty assistant reply"


def _seeded(sampling: Sampling, seed: int, salt: int) -> Sampling:
    return sampling.model_copy(update={"seed": (seed * 1_000_003 + salt) % (2**31)})
