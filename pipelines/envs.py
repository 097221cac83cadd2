"""A run's `rl/` tasks as environments, for `rollout`, `serve-env` and the verl adapters.

One place turns a run folder into environments: its config (the manifest's, with a YAML file and
dotted overrides on top) says which models play the user and the tool simulator, how episodes are
limited and how rewards are weighted; its `rl/` rows are the tasks. Every face builds the same
`simulators.environment.Environment` from here, with the reward of `filters.reward`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from filters.reward import episode_scorer
from pipelines.config import ROLES, ConfigError, RunConfig
from pipelines.parquet_io import read_rows
from pipelines.runtime import model
from schemas.arrow import from_row
from schemas.records import AgentSpec, Failure, RLTask, Task
from simulators.environment import Environment, Scorer, task_from_rl


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def run_config(
    run_dir: str | Path,
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """The run's own config (from its manifest), with `config_path` and `overrides` on top.

    The manifest hides API keys; a hidden key is taken from AGENTMILL_API_KEY or OPENAI_API_KEY.
    """
    manifest = Path(run_dir) / "manifest.json"
    data: dict[str, Any] = {}
    if manifest.exists():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8")).get("config", {})
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{manifest}: cannot read the run's config: {exc}") from exc
    api_key = os.environ.get("AGENTMILL_API_KEY") or os.environ.get("OPENAI_API_KEY")
    for role in ROLES:
        entry = data.get("models", {}).get(role)
        if isinstance(entry, dict) and entry.get("api_key") == "***":
            entry["api_key"] = api_key
    if config_path:
        try:
            loaded = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{config_path}: cannot read config: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: a config must be a mapping")
        data = _merge(data, loaded)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        target = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{run_dir}: invalid rollout config: {problems}") from exc


def load_rl_tasks(run_dir: str | Path) -> tuple[list[RLTask], list[Failure]]:
    """The run's `rl/` rows as RLTasks; a row that does not parse becomes a Failure naming it."""
    folder = Path(run_dir) / "rl"
    tasks: list[RLTask] = []
    failures: list[Failure] = []
    for index, row in enumerate(read_rows(folder)):
        try:
            task = from_row(RLTask, row)
            if not task.tool_specs:
                raise ValueError("tool_specs is empty, so the tools cannot be simulated")
            tasks.append(task)
        except (ValidationError, ValueError) as exc:
            name = row.get("task_id") or row.get("id") or f"row {index}"
            failures.append(Failure(
                stage="rollout", input_id=str(name), error_type=type(exc).__name__,
                error=f"{folder}: rl row {index} ({name}): {str(exc).splitlines()[0]}",
                source=str(folder),
            ))
    return tasks, failures


@dataclass
class RunEnvironments:
    """Builds an environment for any task of a run; the role clients are shared."""

    config: RunConfig
    tasks: dict[str, RLTask]
    failures: list[Failure] = field(default_factory=list)
    _parsed: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls, run_dir: str | Path, config_path: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> RunEnvironments:
        config = run_config(run_dir, config_path, overrides)
        tasks, failures = load_rl_tasks(run_dir)
        return cls(config, {t.task_id: t for t in tasks}, failures)

    def require_sandbox(self) -> None:
        """Raise SandboxUnavailable (saying why) when tasks bring files and no sandbox can be
        made here: checked once at start, so no episode fails for it and none runs unconfined."""
        from pipelines.preflight import sandbox_problem
        from simulators.sandbox import SandboxUnavailable

        needing = sum(t.workspace is not None for t in self.tasks.values())
        problem = sandbox_problem(needing, len(self.tasks))
        if problem:
            raise SandboxUnavailable(problem)

    def task(self, task_id: str) -> tuple[Task, AgentSpec]:
        """`task_id`'s Task and AgentSpec, parsed once (KeyError if the run has no such task);
        enough to score a trajectory without building the role models."""
        if task_id not in self._parsed:  # parse a row's task and tools once, not per episode
            self._parsed[task_id] = task_from_rl(self.tasks[task_id])
        return self._parsed[task_id]

    def scorer(self) -> Scorer:
        """The run's reward (outcome + process, weights from its config)."""
        return episode_scorer(self.config.reward)

    def make(self, task_id: str) -> Environment:
        """A fresh environment for `task_id` (KeyError if the run has no such task)."""
        task, agent = self.task(task_id)
        cfg = self.config
        return Environment(
            task,
            agent,
            model(cfg.models.user),
            model(cfg.models.tool),
            cfg.episode,
            scorer=episode_scorer(cfg.reward),
            model_names={r: getattr(cfg.models, r).display_name() for r in ("user", "tool")},
        )
