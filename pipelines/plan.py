"""Sizing a run before paying for it: token counts per role from a finished small run, scaled.

A small run's manifest says how many prompt and completion tokens and requests each role spent
for the episodes it was asked for (agent and task synthesis and judging included, failures and
retries too). `plan` scales those per-episode figures to N episodes and divides each engine's
tokens by its throughput to get engine-hours and GPU-hours. Two approximations, stated in the
output: token counts come from the small run's models (another model writes longer or shorter
answers and tokenizes differently), and throughput is an aggregate figure per engine at full
batch (prompt + completion tokens per second), not a per-request speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.config import ROLES, RunConfig
from simulators.llm.config import ModelConfig
from simulators.llm.engines import engines


class PlanError(ValueError):
    """The small run cannot be used for a plan; names the file and what is missing."""


@dataclass
class RoleNeed:
    role: str
    prompt: int
    completion: int
    requests: int

    @property
    def tokens(self) -> int:
        return self.prompt + self.completion


@dataclass
class EngineNeed:
    model: str
    roles: list[str]
    tokens: int
    requests: int
    gpus: int
    tokens_per_second: float | None
    throughput_from: str
    engine_hours: float | None = None
    gpu_hours: float | None = None


@dataclass
class Plan:
    episodes: int
    sample_episodes: int
    sample_run: str
    roles: list[RoleNeed] = field(default_factory=list)
    engines: list[EngineNeed] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float | None:
        hours = [e.gpu_hours for e in self.engines if e.gpus]
        return None if any(h is None for h in hours) else round(sum(hours), 2)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes,
            "sample_run": self.sample_run,
            "sample_episodes": self.sample_episodes,
            "roles": {
                r.role: {
                    "prompt": r.prompt,
                    "completion": r.completion,
                    "tokens": r.tokens,
                    "requests": r.requests,
                }
                for r in self.roles
            },
            "engines": [vars(e) for e in self.engines],
            "gpu_hours": self.gpu_hours,
        }


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = storage.run_path(str(run_dir)) / "manifest.json"
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError as exc:
        raise PlanError(f"{path}: no manifest; plan needs a finished run (agentmill run)") from exc
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path}: not JSON: {exc}") from exc


def make_plan(
    config: RunConfig,
    episodes: int,
    manifest: dict[str, Any],
    tokens_per_second: float | None = None,
    source: str = "",
) -> Plan:
    """What `episodes` episodes under `config` need, scaled from the run `manifest` describes."""
    where = source or "manifest"
    sample = int((manifest.get("planned") or {}).get("tasks") or 0) or int(
        (manifest.get("config") or {}).get("episodes") or 0
    )
    if sample <= 0:
        raise PlanError(f"{where}: no planned task count (planned.tasks) to scale from")
    tokens = manifest.get("tokens") or {}
    if not any(tokens.get(role) for role in ROLES):
        raise PlanError(
            f"{where}: no token counts per role (tokens.<role>); the run recorded no model use"
        )
    scale = episodes / sample
    plan = Plan(episodes=episodes, sample_episodes=sample, sample_run=where)
    for role in ROLES:
        counts = tokens.get(role) or {}
        plan.roles.append(
            RoleNeed(
                role=role,
                prompt=round(int(counts.get("prompt", 0)) * scale),
                completion=round(int(counts.get("completion", 0)) * scale),
                requests=round(int(counts.get("requests", 0)) * scale),
            )
        )
    need = {r.role: r for r in plan.roles}
    for engine in engines(config.models.by_role()):
        rate, rate_from = _throughput(engine.config, tokens_per_second)
        gpus = _gpus(engine.config)
        item = EngineNeed(
            model=engine.config.display_name(),
            roles=engine.roles,
            tokens=sum(need[r].tokens for r in engine.roles),
            requests=sum(need[r].requests for r in engine.roles),
            gpus=gpus,
            tokens_per_second=rate,
            throughput_from=rate_from,
        )
        if rate and gpus:
            item.engine_hours = round(item.tokens / rate / 3600, 3)
            item.gpu_hours = round(item.engine_hours * gpus, 2)
        elif not gpus:
            item.engine_hours = item.gpu_hours = 0.0
        plan.engines.append(item)
    return plan


def _throughput(config: ModelConfig, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--tokens-per-second"
    if config.tokens_per_second:
        return config.tokens_per_second, "config tokens_per_second"
    if config.preset:
        from simulators.llm.presets import get_preset

        preset = get_preset(config.preset)
        if preset.tokens_per_second:
            return preset.tokens_per_second, f"preset {preset.name}: {preset.throughput_source}"
    return None, "unknown: pass --tokens-per-second"


def _gpus(config: ModelConfig) -> int:
    """GPUs one engine occupies: tensor x pipeline x data parallel; none for scripted models."""
    if config.backend == "scripted":
        return 0
    extra = config.engine_args
    return (
        config.tensor_parallel_size
        * int(extra.get("pipeline_parallel_size", 1))
        * int(extra.get("data_parallel_size", 1))
    )
