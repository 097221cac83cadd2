"""The records that flow between agentmill's stages.

Every record carries a stable id: a hash of its content, so a rerun with the same config yields the
same ids and duplicates show up as equal ids rather than as near-identical rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

JsonObject = dict[str, Any]

FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
"""Names OpenAI-style function calling accepts (letters, digits, `_`, `.`, `-`; at most 64)."""
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRYPOINT = re.compile(rf"^{IDENTIFIER}(\.{IDENTIFIER})*:{IDENTIFIER}$")
"""`package.module:function`: a dotted module path and one attribute, nothing else."""
STATE_CHANGES: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
        "required": ["key", "value"],
        "additionalProperties": False,
    },
    "maxItems": 4,
}
"""World-state changes as models write them: `key` is a path (`orders/O-1/status`, or a plain
top-level key), `value` its new value as text. One definition for the tool simulator's write
results and the task writer's initial facts and expected outcome."""

Source = Literal["authored", "mcp", "openai", "bfcl", "synthetic"]
SideEffect = Literal["read", "write"]
Difficulty = Literal["easy", "medium", "hard", "decline"]
"""Tiers: one call; several calls; calls that need an earlier call's result; a request the
tools cannot serve, which the agent must decline."""
EndReason = Literal["user_stop", "agent_final", "turn_limit"]
Role = Literal["user", "agent", "tool", "judge", "synthesizer"]
UserStyle = Literal["terse", "verbose", "confused", "impatient", "non-native speaker"]
FaultKind = Literal[
    "not_found", "permission_denied", "rate_limited", "timeout", "partial_result", "empty_result"
]


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
    id_skips_defaults: ClassVar[frozenset[str]] = frozenset()
    """Fields left out of the id while they hold their default, so adding an optional field
    to a record does not change the ids of records that do not use it."""

    id: str = ""

    @model_validator(mode="after")
    def _fill_id(self) -> Record:
        if not self.id:
            excluded = {"id", *self.id_excludes}
            for name, default in _id_defaults(type(self)).items():
                if getattr(self, name) == default:
                    excluded.add(name)
            body = self.model_dump(mode="json", exclude=excluded)
            object.__setattr__(self, "id", content_id(self.id_prefix, body))
        return self


@functools.cache
def _id_defaults(cls: type[Record]) -> dict[str, Any]:
    """The defaults of `cls.id_skips_defaults`, computed once per class: pydantic inspects a
    default factory's signature on every `get_default` call, a large share of a record's cost."""
    return {
        name: cls.model_fields[name].get_default(call_default_factory=True)
        for name in cls.id_skips_defaults
    }


class ToolSpec(Record):
    """One callable tool: what it does, its arguments' schema and its result's schema."""

    id_prefix: ClassVar[str] = "tool"
    id_skips_defaults: ClassVar[frozenset[str]] = frozenset({"entrypoint"})

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
    entrypoint: str | None = Field(
        default=None,
        description="`package.module:function` to run this tool in process instead of "
        "simulating it; imported only when the run config sets `episode.allow_entrypoints`.",
    )

    @model_serializer(mode="wrap")
    def _drop_unset_entrypoint(self, handler: Any) -> Any:
        """Specs without an entrypoint dump (and hash, also inside agents) as they always did."""
        data = handler(self)
        if isinstance(data, dict) and data.get("entrypoint", "") is None:
            del data["entrypoint"]
        return data

    @field_validator("entrypoint")
    @classmethod
    def _valid_entrypoint(cls, entrypoint: str | None) -> str | None:
        if entrypoint is not None and not ENTRYPOINT.match(entrypoint):
            raise ValueError(
                f"{entrypoint!r} is not an entrypoint: write 'package.module:function'"
            )
        return entrypoint

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


class Outcome(BaseModel):
    """What a task must leave behind, checkable without a judge (as tau-bench checks it).

    `state` maps world paths (`orders/O-1/status`) to the values they must hold at the end;
    every other path of the initial world must be unchanged. `facts` are strings the agent must
    say to the user (matched case-insensitively in its replies).
    """

    model_config = ConfigDict(extra="forbid")

    state: JsonObject = Field(default_factory=dict)
    facts: list[str] = Field(default_factory=list)

    def is_empty(self) -> bool:
        return not self.state and not self.facts


WORKSPACE_PATH = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_.\- /]{1,200}$")
"""A workspace file's path: relative, no `..`, letters, digits, `_ . - /` and spaces."""


def _check_paths(paths: Any, field: str) -> None:
    for path in paths:
        if not WORKSPACE_PATH.match(path) or "//" in path or path.endswith("/"):
            raise ValueError(f"{field}: {path!r} is not a relative workspace path")


class EmailExpectation(BaseModel):
    """An email the task expects in the outbox: recipient, attachments, words in the subject."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=3)
    attachments: list[str] = Field(default_factory=list)
    subject_contains: list[str] = Field(default_factory=list)


class WorkspaceSpec(BaseModel):
    """The files a task brings, and the checks its final files must pass.

    `files` (path -> text) are the agent's initial workspace. `hidden_tests` (path -> pytest
    file) are never shown to the agent: after the episode they run in a sandbox over its final
    files, and the share that passes is the reward. `required_points` (path -> strings that must
    appear in that file, case-insensitive), `min_headings` (path -> least number of Markdown
    headings), `emails` (what the outbox must hold) and `emails_at_most` are checks on what the
    agent produced.
    """

    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(default_factory=dict)
    hidden_tests: dict[str, str] = Field(default_factory=dict)
    required_points: dict[str, list[str]] = Field(default_factory=dict)
    min_headings: dict[str, int] = Field(default_factory=dict)
    emails: list[EmailExpectation] = Field(default_factory=list)
    emails_at_most: int | None = Field(
        default=None, ge=0,
        description="The most emails the outbox may hold at the end (0: a task to decline).",
    )

    @model_validator(mode="after")
    def _relative_paths(self) -> WorkspaceSpec:
        _check_paths(self.files, "files")
        _check_paths(self.hidden_tests, "hidden_tests")
        _check_paths(self.required_points, "required_points")
        _check_paths(self.min_headings, "min_headings")
        return self

    def has_checks(self) -> bool:
        return bool(
            self.hidden_tests or self.required_points or self.min_headings or self.emails
            or self.emails_at_most is not None
        )


class Task(Record):
    """What a simulated user wants from an agent, and how success is judged."""

    id_prefix: ClassVar[str] = "task"
    id_skips_defaults: ClassVar[frozenset[str]] = frozenset(
        {"expected_outcome", "slot", "workspace"}
    )

    agent_id: str
    slot: int | None = Field(
        default=None,
        description="The task's place in its run (its task index, or its entry in a domain's "
        "tasks file). Part of the id: two identical tasks in two slots are two tasks, each "
        "played once, so no stage keyed by task id ever merges them.",
    )
    goal: str
    user_knows: list[str] = Field(default_factory=list)
    user_withholds: list[str] = Field(default_factory=list)
    difficulty: Difficulty = "easy"
    rubric: Rubric
    initial_state: JsonObject = Field(default_factory=dict)
    expected_outcome: Outcome = Field(
        default_factory=Outcome, description="The verifiable end state and facts, for rewards."
    )
    workspace: WorkspaceSpec | None = Field(
        default=None,
        description="Files the task brings (run for real in a sandbox) and checks on the files "
        "the agent leaves; None: no workspace.",
    )


class Persona(Record):
    """Who the simulated user is and how they talk."""

    id_prefix: ClassVar[str] = "persona"

    name: str
    occupation: str
    city: str
    traits: list[str] = Field(default_factory=list)
    style: UserStyle = "terse"

    def describe(self) -> str:
        traits = ", ".join(self.traits) if self.traits else "plain"
        return f"{self.name}, a {self.occupation} from {self.city}; style: {self.style}, {traits}"


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


class InjectedFault(BaseModel):
    """A tool answer the simulator replaced with a failure on purpose (seeded), not a bug."""

    model_config = ConfigDict(extra="forbid")

    tool_call_id: str
    tool: str
    kind: FaultKind


class Trajectory(Record):
    """A finished episode: the conversation, what was offered, and how it ended."""

    id_prefix: ClassVar[str] = "traj"
    id_excludes: ClassVar[frozenset[str]] = frozenset({"token_counts"})
    id_skips_defaults: ClassVar[frozenset[str]] = frozenset(
        {"injected_faults", "user_style", "user_changed_mind"}
    )

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
    injected_faults: list[InjectedFault] = Field(default_factory=list)
    user_style: str = ""
    user_changed_mind: bool = False


class CriterionScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    criterion: str
    score: float = Field(ge=0.0, le=1.0)
    reason: str = ""


class JudgeVote(BaseModel):
    """One committee member's verdict on a trajectory."""

    model_config = ConfigDict(extra="forbid")

    judge_model: str
    score: float
    passed: bool


class Judgement(Record):
    """The verdict on one trajectory: deterministic checks first, then the rubric judge (one
    model, or a committee whose `votes` are kept with their `agreement`)."""

    id_prefix: ClassVar[str] = "judgement"
    id_skips_defaults: ClassVar[frozenset[str]] = frozenset(
        {"reward", "reward_reasons", "votes", "agreement"}
    )

    trajectory_id: str
    scores: list[CriterionScore] = Field(default_factory=list)
    score: float = 0.0
    passed: bool
    reasons: list[str] = Field(default_factory=list)
    failed_checks: list[str] = Field(default_factory=list)
    judge_model: str = ""
    reward: float | None = Field(
        default=None, description="The outcome reward (state and facts); None: no outcome."
    )
    reward_reasons: list[str] = Field(default_factory=list)
    votes: list[JudgeVote] = Field(
        default_factory=list, description="A committee's verdicts, one per judge model."
    )
    agreement: float | None = Field(
        default=None, description="Share of the committee whose verdict is the committee's."
    )


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
    id_skips_defaults: ClassVar[frozenset[str]] = frozenset(
        {"expected_outcome", "user_knows", "user_withholds", "workspace"}
    )

    task_id: str
    agent_id: str
    domain: str
    difficulty: Difficulty
    goal: str = Field(description="The user's goal, for the user simulator of a rollout.")
    user_knows: list[str] = Field(
        default_factory=list, description="What the rollout's simulated user may share."
    )
    user_withholds: list[str] = Field(
        default_factory=list, description="What the rollout's simulated user shares when asked."
    )
    prompt: list[Message]
    tools: list[JsonObject]
    rubric: Rubric
    initial_state: JsonObject = Field(default_factory=dict)
    expected_outcome: Outcome = Field(default_factory=Outcome)
    tool_specs: list[JsonObject] = Field(
        default_factory=list, description="Full ToolSpecs, so a rollout can simulate the tools."
    )
    workspace: WorkspaceSpec | None = Field(
        default=None, description="The task's files and hidden checks, for sandboxed rollouts."
    )


class JudgedTrajectory(BaseModel):
    """A trajectory with its verdict, passed or not: the judge stage's one output record
    (`judgement.passed` sends it to sft/ or rejected/)."""

    model_config = ConfigDict(extra="forbid")

    trajectory: Trajectory
    judgement: Judgement

    @property
    def id(self) -> str:
        return self.trajectory.id

