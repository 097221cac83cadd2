"""One episode: the simulated user, the agent and the tool simulator play against each other.

The agent's request always starts with its system prompt and its tool list, byte-identical across
every turn and every episode of that agent, so an engine's prefix cache serves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.records import AgentSpec, Message, Persona, Task, Trajectory
from simulators.ask import RoleOutputError, ask
from simulators.environment import (
    Environment,
    EpisodeError,
    StepResult,
    agent_system_message,
    seeded,
)
from simulators.episode_config import EpisodeConfig
from simulators.llm.base import ChatModel, Completion
from simulators.llm.errors import ModelError
from simulators.llm.toolcall import prose

__all__ = [
    "EpisodeConfig",
    "EpisodeError",
    "RoleClients",
    "agent_system_message",
    "drive",
    "run_episode",
]


@dataclass
class RoleClients:
    """Which chat client plays which role in an episode; equal configs share one client.

    (The run config's `pipelines.config.RoleModels` says which model each role uses; this holds
    the clients built from it.)
    """

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


async def run_episode(
    task: Task,
    agent: AgentSpec,
    persona: Persona,
    models: RoleClients,
    config: EpisodeConfig,
    seed: int,
) -> Trajectory:
    """Play one episode to its end and return the trajectory, or raise EpisodeError.

    The episode is the task's `Environment` driven by the agent model (`drive`).
    """
    env = Environment(
        task, agent, models.user, models.tool, config, model_names=models.model_names()
    )
    await env.reset(seed, persona)
    try:
        await drive(env, models.agent)
    finally:
        env.close()  # a task's workspace folder goes, also when the episode fails
    assert env.trajectory is not None
    return env.trajectory


async def drive(env: Environment, agent: ChatModel) -> StepResult:
    """Let `agent` play a freshly reset `env` to its end; the last step (reward included).

    Each round the agent may call tools while the turn has tool rounds left, else it must reply
    (and say whether its reply is final). Raises EpisodeError when a model fails for good.
    """
    config = env.config
    while True:
        may_call = env.may_call_tools
        sampling = seeded(config.agent, env.seed, 100 + len(env.messages))
        try:
            completion = await ask(
                agent, "agent", env.usage, env.messages, sampling,
                tools=env.tools if may_call else None,
                schema=None if may_call else FINAL_REPLY_SCHEMA,
                attempts=config.attempts,
                check=_reply_not_empty,
            )
        except RoleOutputError as exc:
            env.done = True
            raise EpisodeError(str(exc), exc.role, exc.raw_output, env.usage) from exc
        except ModelError as exc:
            env.done = True
            raise EpisodeError(f"model error: {exc}", usage=env.usage) from exc
        if completion.tool_calls:
            result = await env.step(Message(role="assistant", tool_calls=completion.tool_calls))
        else:
            text = completion.text if may_call else str(completion.parsed["content"])
            parsed = completion.parsed if isinstance(completion.parsed, dict) else {}
            result = await env.step(
                Message(role="assistant", content=text.strip()),
                final=bool(parsed.get("final", False)),
            )
        if result.done:
            return result


FINAL_REPLY_SCHEMA = {
    "type": "object",
    "properties": {"content": prose(minLength=1), "final": {"type": "boolean"}},
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
