"""The run config: one pydantic model, loaded from YAML, overridable from the CLI.

Its fingerprint (a hash of everything that shapes the output, secrets and the output path
excluded) goes into the manifest so two data sets can be told apart or proven alike.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from filters.reward import RewardConfig
from schemas.records import canonical_json
from simulators.episode import EpisodeConfig
from simulators.llm.base import Sampling
from simulators.llm.config import HOW_NOT_WHAT_FIELDS, ModelConfig

ROLES = ("user", "agent", "tool", "judge", "synthesizer")
MAX_EPISODES = 10_000_000
"""Episodes one run may ask for: its agent and task slots are listed when the pipeline is built,
so 10^12 would exhaust memory before any work; larger jobs are several runs."""
MAX_TOOLS = 128
"""Tools one agent may be offered (their schemas go into every prompt)."""


class RoleModels(BaseModel):
    """The model for each role; the embedded default plays them all unless told otherwise."""

    model_config = ConfigDict(extra="forbid")

    user: ModelConfig = ModelConfig()
    agent: ModelConfig = ModelConfig()
    tool: ModelConfig = ModelConfig()
    judge: ModelConfig = ModelConfig()
    synthesizer: ModelConfig = ModelConfig()
    memory_budget_gib: float | None = Field(
        default=None,
        gt=0.0,
        description="Memory one worker may give its in-process engines (weights + KV cache, "
        "summed over distinct models); checked at load, before any engine starts.",
    )

    def by_role(self) -> dict[str, ModelConfig]:
        return {role: getattr(self, role) for role in ROLES}

    @model_validator(mode="after")
    def _check_memory_budget(self) -> RoleModels:
        if self.memory_budget_gib is not None:
            from simulators.llm.engines import check_memory_budget

            check_memory_budget(self.by_role(), self.memory_budget_gib)
        return self


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pass_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    attempts: int = Field(default=3, ge=1)
    sampling: Sampling = Sampling(temperature=0.2, max_tokens=320)
    models: list[ModelConfig] = Field(
        default_factory=list,
        description="A judge committee: every model scores each trajectory and `voting` "
        "combines their verdicts (agreement is recorded). Empty: `models.judge` judges alone.",
    )
    voting: Literal["majority", "mean"] = Field(
        default="majority",
        description="`majority`: passed when more than half the judges pass it; `mean`: when "
        "the mean score reaches pass_threshold and no criterion's mean is 0.",
    )


class ControlConfig(BaseModel):
    """How a run guards itself: checkpoints and the failure brake. None of it shapes the data, so
    it stays out of the fingerprint (changing it still resumes the same work)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_every: int = Field(
        default=16, ge=1, description="Finished elements per checkpoint part file (per stage)."
    )
    checkpoint_seconds: float = Field(
        default=30.0, gt=0, description="Write a checkpoint part at least this often."
    )
    max_failure_rate: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Stop the run once more than this share of a stage's finished elements "
        "are failures (1.0 never stops).",
    )
    failure_rate_after: int = Field(
        default=20, ge=1, description="Finished elements a stage needs before the brake applies."
    )


class RunConfig(BaseModel):
    """Everything a run needs; a rerun with the same config makes the same data."""

    model_config = ConfigDict(extra="forbid")

    out: str = "runs/demo"
    seed: int = 0
    episodes: int = Field(
        default=6, ge=1, le=MAX_EPISODES,
        description="Tasks to simulate, one episode each (split larger jobs into several runs).",
    )
    tasks_per_agent: int = Field(default=2, ge=1, le=MAX_EPISODES)
    min_tools: int = Field(default=3, ge=1, le=MAX_TOOLS)
    max_tools: int = Field(default=6, ge=1, le=MAX_TOOLS)
    toolspecs: list[str] = Field(
        default_factory=list, description="Spec files or folders; empty means the seed library."
    )
    domain: str | None = Field(
        default=None,
        description="A tau-bench-like domain folder (policy.md, tools.json, world.json, "
        "tasks.json): its agent plays its tasks, `episodes` of them at most, instead of "
        "composing agents and writing tasks from `toolspecs`.",
    )
    models: RoleModels = RoleModels()
    episode: EpisodeConfig = EpisodeConfig()
    judge: JudgeConfig = JudgeConfig()
    # A task answer carries a goal, what the user knows and withholds, criteria, tools, the
    # world's initial facts and the expected changes and facts: 320 tokens truncated it.
    synthesis: Sampling = Sampling(temperature=0.8, max_tokens=768)
    attempts: int = Field(
        default=3, ge=1, le=100, description="Tries per synthesized agent or task."
    )
    batch_size: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Tasks handed to a worker at a time (a unit of delivery).",
    )
    in_flight: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="Episodes (and agents, tasks, judgements) in flight per worker process, "
        "a new one starting as soon as any ends. An episode waits on one request at a time, "
        "so this is also what can keep each model's max_in_flight requests busy.",
    )
    control: ControlConfig = ControlConfig()
    reward: RewardConfig = Field(
        default_factory=RewardConfig,
        description="Weights of a rollout's outcome and process reward (`agentmill rollout`, "
        "`serve-env`, verl); the mill's own data does not depend on them.",
    )

    def fingerprint(self) -> str:
        body = self.model_dump(mode="json", exclude={"out", "control", "reward"})
        for role in ROLES:
            for field in HOW_NOT_WHAT_FIELDS:
                body["models"][role].pop(field, None)
            if body["models"][role].get("server_command") is None:  # fingerprints from before it
                body["models"][role].pop("server_command", None)
        committee = body["judge"]
        for member in committee["models"]:
            for field in HOW_NOT_WHAT_FIELDS:
                member.pop(field, None)
            if member.get("server_command") is None:
                member.pop("server_command", None)
        if not committee["models"] and committee["voting"] == "majority":
            del committee["models"], committee["voting"]  # fingerprints from before committees
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]

    def public_dump(self) -> dict[str, Any]:
        """The config as the manifest records it: API keys never appear."""
        body = self.model_dump(mode="json")
        for role in ROLES:
            body["models"][role]["api_key"] = (
                "***" if getattr(self.models, role).api_key else None
            )
        for member, config in zip(body["judge"]["models"], self.judge.models, strict=True):
            member["api_key"] = "***" if config.api_key else None
        return body


class ConfigError(ValueError):
    """A config file that cannot be used; names the file and the field."""


MAX_CONFIG_NODES = 100_000
"""Values a config may hold once YAML aliases are expanded (a real one holds a few hundred);
an alias bomb expands to billions, which validation and the fingerprint would try to build."""


def _check_tree(data: Any, source: str) -> None:
    """Refuse an alias bomb and non-finite numbers (.nan, .inf), naming the field."""
    stack: list[tuple[Any, str]] = [(data, "")]
    seen = 0
    while stack:
        value, where = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise ConfigError(
                f"{source}: more than {MAX_CONFIG_NODES:,} values once YAML aliases are "
                f"expanded (near {where or 'the top'}); refused"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: {where}: {value} is not a usable number")
        if isinstance(value, dict):
            stack.extend((child, f"{where}.{key}".lstrip(".")) for key, child in value.items())
        elif isinstance(value, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(value))


def load_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    sources: dict[str, str] | None = None,
) -> RunConfig:
    """The config from `path` (YAML) with `overrides` (dotted keys) applied on top.

    An invalid value is blamed on where it came from: `sources` names each override (e.g.
    `{"episodes": "--episodes"}`), else the file, else the default.
    """
    from toolspecs.load import MAX_FILE_BYTES, InputError, read_input

    data: dict[str, Any] = {}
    source = str(path)
    if path:
        try:
            loaded = yaml.safe_load(read_input(path, min(MAX_FILE_BYTES, 1 << 20)))
        except InputError as exc:
            raise ConfigError(f"cannot read config: {exc}") from exc
        except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: 4,300 digits
            raise ConfigError(f"{source}: cannot read config: {exc or type(exc).__name__}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: a config must be a mapping, not {type(loaded).__name__}")
        _check_tree(loaded, source)
        data = loaded or {}
    from_file = _dotted_keys(data)
    applied: dict[str, str] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        applied[dotted] = (sources or {}).get(dotted, f"override {dotted}")
        target = data
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"{path}: {where} must be a mapping (to set {dotted} from "
                    f"{applied[dotted]}), not {type(target).__name__} {str(target)[:40]!r}"
                )
        target[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            origin = _origin(where, applied, from_file, str(path) if path else None)
            value = e.get("input")
            shown = f" = {value!r}" if not isinstance(value, dict | list) else ""
            problems.append(f"{where}{shown} (from {origin}): {e['msg']}")
        prefix = f"{path}: " if path else ""
        raise ConfigError(f"{prefix}invalid config: " + "; ".join(problems)) from exc


def _dotted_keys(data: Any, prefix: str = "") -> set[str]:
    """Every dotted key path a nested mapping sets (its inner nodes included)."""
    keys: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            keys.add(dotted)
            keys |= _dotted_keys(value, dotted + ".")
    return keys


def _origin(where: str, applied: dict[str, str], from_file: set[str], path: str | None) -> str:
    """Where the value at dotted `where` came from: a flag, the config file, or the default."""
    parts = where.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in applied:
            return applied[prefix]
    if path is not None and any(".".join(parts[:end]) in from_file
                                for end in range(len(parts), 0, -1)):
        return path
    return "the default"
