"""The episode's limits and sampling: its own module, so the environment and the episode loop
that builds on it both import it without importing each other."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from simulators.llm.base import Sampling


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
