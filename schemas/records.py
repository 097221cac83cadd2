"""The records that flow between agentmill's stages.

Every record carries a stable id: a hash of its content, so a rerun with the same config yields the
same ids and duplicates show up as equal ids rather than as near-identical rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JsonObject = dict[str, Any]

FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
"""Names OpenAI-style function calling accepts (letters, digits, `_`, `.`, `-`; at most 64)."""

Source = Literal["authored", "mcp", "openai", "bfcl", "synthetic"]
SideEffect = Literal["read", "write"]
Difficulty = Literal["easy", "medium", "hard", "decline"]
"""Tiers: one call; several calls; calls that need an earlier call's result; a request the
tools cannot serve, which the agent must decline."""
EndReason = Literal["user_stop", "agent_final", "turn_limit"]
Role = Literal["user", "agent", "tool", "judge", "synthesizer"]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the form ids are hashed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_id(prefix: str, value: Any) -> str:
    """A short, stable id for `value`; the prefix makes ids readable in logs and joins."""
    digest = hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]
    return f"{prefix}_{digest}"


class Record(BaseModel):
    """Base for records whose `id` is derived from their content unless given."""

    model_config = ConfigDict(extra="forbid")
    id_prefix: ClassVar[str] = "rec"
    id_excludes: ClassVar[frozenset[str]] = frozenset()

    id: str = ""

    @model_validator(mode="after")
    def _fill_id(self) -> Record:
        if not self.id:
            excluded = {"id", *self.id_excludes}
            body = self.model_dump(mode="json", exclude=excluded)
            object.__setattr__(self, "id", content_id(self.id_prefix, body))
        return self


class ToolSpec(Record):
    """One callable tool: what it does, its arguments' schema and its result's schema."""

    id_prefix: ClassVar[str] = "tool"

    name: str = Field(description="Function name the model calls: letters, digits, _ . -")
    description: str = Field(min_length=1, description="What the tool does, for the model.")
    parameters: JsonObject = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema (draft 2020-12 or draft-07) of the arguments object.",
    )
    returns: JsonObject | None = Field(
        default=None, description="JSON Schema of the result the tool answers with."
    )
    domain: str = Field(default="general", min_length=1, description="Application domain.")
    source: Source = "authored"
    side_effect: SideEffect = Field(
        default="read", description="`write` tools change the world state; `read` tools do not."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not FUNCTION_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a valid function name "
                "(letters, digits, _ . -; starts with a letter or _; at most 64 characters)"
            )
        return name

    def openai_tool(self) -> JsonObject:
        """The tool as an OpenAI `tools` entry, the form chat templates and servers expect."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class AgentSpec(Record):
    """An assistant persona: a system prompt over a coherent set of tools from one domain."""

    id_prefix: ClassVar[str] = "agent"

    name: str
    domain: str
    system_prompt: str
    tool_ids: list[str] = Field(min_length=1)
    tools: list[ToolSpec] = Field(default_factory=list, description="The tools, denormalized.")
    policy: str | None = None


class Rubric(BaseModel):
    """How a judge decides whether an episode achieved its task."""

    model_config = ConfigDict(extra="forbid")

    success_criteria: list[str] = Field(min_length=1)
    expected_tools: list[str] = Field(
        default_factory=list, description="Tool names the agent is expected to call, in order."
    )
    checkpoints: list[str] = Field(default_factory=list)


class Task(Record):
    """What a simulated user wants from an agent, and how success is judged."""

    id_prefix: ClassVar[str] = "task"

    agent_id: str
    goal: str
    user_knows: list[str] = Field(default_factory=list)
    user_withholds: list[str] = Field(default_factory=list)
    difficulty: Difficulty = "easy"
    rubric: Rubric
    initial_state: JsonObject = Field(default_factory=dict)


class Persona(Record):
    """Who the simulated user is and how they talk."""

    id_prefix: ClassVar[str] = "persona"

    name: str
    occupation: str
    city: str
    traits: list[str] = Field(default_factory=list)

    def describe(self) -> str:
        traits = ", ".join(self.traits) if self.traits else "plain"
        return f"{self.name}, a {self.occupation} from {self.city}; style: {traits}"


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str = Field(description="JSON text of the arguments, as OpenAI sends them.")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message in OpenAI format."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class TokenCount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: int = 0
    completion: int = 0
    requests: int = 0
    retries: int = 0
    """Extra transport attempts (429, 5xx, dropped connections) the requests needed."""
    wait_s: float = 0.0
    """Time spent waiting on the model, summed over requests (they overlap across episodes)."""

    def add(
        self, prompt: int, completion: int, retries: int = 0, wait_s: float = 0.0
    ) -> None:
        self.prompt += prompt
        self.completion += completion
        self.requests += 1
        self.retries += retries
        self.wait_s = round(self.wait_s + wait_s, 4)


class Trajectory(Record):
    """A finished episode: the conversation, what was offered, and how it ended."""

    id_prefix: ClassVar[str] = "traj"
    id_excludes: ClassVar[frozenset[str]] = frozenset({"token_counts"})

    task_id: str
    agent_id: str
    persona_id: str
    domain: str
    messages: list[Message]
    tools: list[JsonObject] = Field(description="OpenAI `tools` entries offered to the agent.")
    final_state: JsonObject = Field(default_factory=dict)
    token_counts: dict[str, TokenCount] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    seed: int = 0
    end_reason: EndReason
    turns: int = 0


class CriterionScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    criterion: str
    score: float = Field(ge=0.0, le=1.0)
    reason: str = ""


class Judgement(Record):
    """The verdict on one trajectory: deterministic checks first, then the rubric judge."""

    id_prefix: ClassVar[str] = "judgement"

    trajectory_id: str
    scores: list[CriterionScore] = Field(default_factory=list)
    score: float = 0.0
    passed: bool
    reasons: list[str] = Field(default_factory=list)
    failed_checks: list[str] = Field(default_factory=list)
    judge_model: str = ""


class Failure(Record):
    """Anything that could not be processed; kept so nothing disappears silently."""

    id_prefix: ClassVar[str] = "failure"

    stage: str
    input_id: str
    error_type: str
    error: str
    source: str = Field(default="", description="File (and record) the input came from, if any.")
    raw_output: str | None = None


class RLTask(Record):
    """A task ready for RL rollouts: the opening prompt, tools, rubric and initial world state."""

    id_prefix: ClassVar[str] = "rl"

    task_id: str
    agent_id: str
    domain: str
    difficulty: Difficulty
    goal: str = Field(description="The user's goal, for the user simulator of a rollout.")
    prompt: list[Message]
    tools: list[JsonObject]
    rubric: Rubric
    initial_state: JsonObject = Field(default_factory=dict)
    tool_specs: list[JsonObject] = Field(
        default_factory=list, description="Full ToolSpecs, so a rollout can simulate the tools."
    )


class RejectedTrajectory(BaseModel):
    """A trajectory that failed a check or the judge, kept with the verdict."""

    model_config = ConfigDict(extra="forbid")

    trajectory: Trajectory
    judgement: Judgement

    @property
    def id(self) -> str:
        return self.trajectory.id
