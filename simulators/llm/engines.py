"""Which engines a config starts in one worker, what they hold in memory, and whether it fits.

Roles whose `ModelConfig.key()` is equal share one engine (the registry keys clients the same way),
so the engines of a worker are the distinct keys among the roles. Each in-process (`vllm`) engine
holds its weights plus its KV cache; their sum must fit the worker's `memory_budget_gib`, checked
when the config loads, before any engine starts, because an engine that does not fit fails only
after tens of seconds (or minutes, for a large MoE) of loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.llm.config import EMBEDDED_MODEL, ModelConfig
from simulators.llm.presets import get_preset

GIB = 1 << 30
EMBEDDED_PARAMS = 134_515_008
"""SmolLM2-135M's parameter count; its converted checkpoint is bfloat16."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
VLLM_DEFAULT_GPU_SHARE = 0.9


@dataclass
class Engine:
    """One model client of a worker and the roles it serves."""

    config: ModelConfig
    roles: list[str] = field(default_factory=list)

    @property
    def in_process(self) -> bool:
        """Served on the worker machine (vLLM in process, or the machine's shared vLLM server),
        so it takes the worker's memory and GPUs."""
        return self.config.backend in ("vllm", "vllm-server")

    def weights(self) -> tuple[float | None, str]:
        return estimate_weights_gib(self.config)

    def memory_gib(self) -> float | None:
        """Weights plus a fixed KV cache; None when the weights cannot be estimated."""
        weights, _ = self.weights()
        if weights is None:
            return None
        return weights + (self.config.kv_cache_gib or 0.0)

    def summary(self) -> dict[str, Any]:
        """What the manifest records about this engine."""
        weights, source = self.weights() if self.in_process else (None, "remote server")
        config = self.config
        return {
            "model": config.display_name(),
            "preset": config.preset,
            "roles": list(self.roles),
            "tool_call_mode": config.tool_call_mode,
            "tool_call_parser": config.tool_call_parser,
            "tensor_parallel_size": config.tensor_parallel_size,
            "enable_expert_parallel": config.enable_expert_parallel,
            "quantization": config.quantization,
            "weights_gib": weights,
            "weights_from": source,
            "kv_cache_gib": config.kv_cache_gib if self.in_process else None,
        }


def engines(models: Mapping[str, ModelConfig]) -> list[Engine]:
    """The distinct engines for `models` (role -> config), in role order."""
    found: dict[str, Engine] = {}
    for role, config in models.items():
        found.setdefault(config.key(), Engine(config)).roles.append(role)
    return list(found.values())


def estimate_weights_gib(config: ModelConfig) -> tuple[float | None, str]:
    """(GiB of weights, where the figure came from); (None, why) when unknown."""
    if config.weights_gib is not None:
        return config.weights_gib, "config weights_gib"
    if config.model == EMBEDDED_MODEL:
        return round(EMBEDDED_PARAMS * 2 / GIB, 2), "embedded SmolLM2-135M, bfloat16"
    path = Path(config.model).expanduser()
    if path.is_dir():
        size = sum(
            f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES
        )
        if size:
            return round(size / GIB, 3), f"checkpoint files in {path}"
    if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
        return round(path.stat().st_size / GIB, 3), f"checkpoint file {path}"
    if config.preset:
        preset = get_preset(config.preset)
        if config.model == preset.model or not path.exists():
            return preset.weights_gib(), f"preset {preset.name}"
    return None, f"no local checkpoint at {config.model!r} and no preset"


def check_memory_budget(models: Mapping[str, ModelConfig], budget_gib: float) -> None:
    """Raise ValueError, naming each engine's share, when the worker's engines exceed the budget.

    Counted per in-process engine: weights plus `kv_cache_gib`. Engines that let vLLM size their
    KV cache from a GPU memory share must together claim at most the whole GPU.
    """
    local = [engine for engine in engines(models) if engine.in_process]
    parts: list[str] = []
    unknown: list[str] = []
    total = 0.0
    for engine in local:
        weights, source = engine.weights()
        who = "+".join(engine.roles)
        if weights is None:
            unknown.append(
                f"{who} ({engine.config.model}): {source}; set models.{engine.roles[0]}.weights_gib"
            )
            continue
        kv = engine.config.kv_cache_gib
        total += weights + (kv or 0.0)
        kv_text = f"{kv:g} GiB KV cache" if kv is not None else "KV cache from the GPU share"
        parts.append(f"{who}: {engine.config.display_name()} {weights:g} GiB weights + {kv_text}")
    if unknown:
        raise ValueError(
            "memory_budget_gib is set but the weights of some engines are unknown: "
            + "; ".join(unknown)
        )
    if total > budget_gib:
        raise ValueError(
            f"the worker's engines need {total:.1f} GiB but memory_budget_gib is {budget_gib:g}: "
            + "; ".join(parts)
            + ". Give roles the same model to share an engine, or shrink kv_cache_gib."
        )
    shares = [
        engine for engine in local if engine.config.kv_cache_gib is None
    ]
    claimed = sum(e.config.gpu_memory_utilization or VLLM_DEFAULT_GPU_SHARE for e in shares)
    if len(shares) > 1 and claimed > 1.0:
        raise ValueError(
            f"{len(shares)} engines size their KV cache from a GPU memory share and claim "
            f"{claimed:.2f} of each GPU together: set gpu_memory_utilization so they sum to at "
            "most 1.0 ("
            + ", ".join(
                f"{'+'.join(e.roles)}: {e.config.gpu_memory_utilization or VLLM_DEFAULT_GPU_SHARE}"
                for e in shares
            )
            + ")"
        )
