"""vLLM settings for well-known mixture-of-experts models, from their model cards and vLLM recipes.

A preset is selected in the config (`models.agent.preset: qwen3-30b-a3b`) and fills in the
`ModelConfig` fields it names; any field the config spells out wins. The settings are what the
cited sources recommend for serving each model with vLLM; the weight sizes are estimates
(parameters x bytes per parameter of the published checkpoint) used by the memory-budget check
and by `agentmill plan`.

Sources (read 2026-11; engines change, re-check before a large run):

- Kimi-K2-Instruct: Moonshot's deployment guide,
  https://raw.githubusercontent.com/MoonshotAI/Kimi-K2/main/docs/deploy_guidance.md
  (FP8 weights, smallest unit 16 GPUs H200/H20 at 128k context with TP16, `--trust-remote-code`,
  `--enable-auto-tool-choice --tool-call-parser kimi_k2`).
- DeepSeek-V3: vLLM recipes, https://docs.vllm.ai/projects/recipes/en/latest/DeepSeek/DeepSeek-V3.html
  (8xH200 native FP8, TP8 + `--enable-expert-parallel`, `--trust-remote-code`); tool parser
  `deepseek_v3` from vLLM's tool-calling docs,
  https://docs.vllm.ai/en/latest/features/tool_calling.html
- Qwen3-30B-A3B / Qwen3-235B-A22B: Qwen's vLLM guide,
  https://qwen.readthedocs.io/en/stable/deployment/vllm.html (tensor parallelism, `hermes` tool
  parser for Qwen3 function calling, `enable_thinking` chat-template switch); GPU counts per
  model from the SGLang cookbook's Qwen3 table (30B-A3B: TP1 on H100; 235B-A22B: TP8 on H100),
  https://docs.sglang.io/cookbook/autoregressive/Qwen/Qwen3.md ; model cards
  https://huggingface.co/Qwen/Qwen3-30B-A3B and https://huggingface.co/Qwen/Qwen3-235B-A22B
  (32,768-token native context).
- Qwen3-235B-A22B-Instruct-2507-FP8 (throughput-tuned): GPUStack performance lab,
  docs/performance-lab/qwen3-235b-a22b/h100.md in github.com/gpustack/gpustack, read at
  https://code.smartscf.cn/wjf/gpustack/src/commit/b838ef830f76ad3de5be0301bf11050dd2d5c29b/docs/performance-lab/qwen3-235b-a22b/h100.md
  (`vllm serve
  Qwen/Qwen3-235B-A22B-Instruct-2507-FP8 -tp 4 --max-num-batched-tokens 16384`, ShareGPT total
  throughput 7,787 tokens/s per TP4 replica on H100).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 1 << 30


@dataclass(frozen=True)
class Preset:
    """How one model is served: `ModelConfig` fields plus facts for sizing a deployment."""

    name: str
    model: str
    """Hugging Face repo id; on workers point `model` at baked-in weights (see dataflow.md)."""
    total_params_b: float
    active_params_b: float
    bytes_per_param: float
    """Of the published checkpoint: 2 for BF16, 1 for FP8."""
    gpus: int
    gpu: str
    settings: dict[str, Any]
    sources: tuple[str, ...]
    tokens_per_second: float | None = None
    """Prompt + completion tokens per second per engine, where a source states one."""
    throughput_source: str | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def weights_gib(self) -> float:
        return round(self.total_params_b * 1e9 * self.bytes_per_param / GIB, 1)


# Every GPU preset: CUDA graphs on (the CPU default is eager), vLLM's own KV sizing from its
# memory share (no fixed kv_cache_gib), and vLLM's GPU default batch of 256 sequences.
_GPU = {"enforce_eager": False, "kv_cache_gib": None, "max_num_seqs": 256}
_QWEN3 = {
    **_GPU,
    "tool_call_mode": "native",
    "tool_call_parser": "hermes",
    "max_model_len": 32768,
    # Non-thinking mode: data for a tool-using agent, not long reasoning traces.
    "chat_template_kwargs": {"enable_thinking": False},
}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="kimi-k2-instruct",
            model="moonshotai/Kimi-K2-Instruct",
            total_params_b=1040,
            active_params_b=32,
            bytes_per_param=1,
            gpus=16,
            gpu="nvidia-h200-141gb",
            settings={
                **_GPU,
                "tensor_parallel_size": 16,
                "trust_remote_code": True,
                "tool_call_mode": "native",
                "tool_call_parser": "kimi_k2",
                "max_model_len": 131072,
            },
            sources=(
                "https://raw.githubusercontent.com/MoonshotAI/Kimi-K2/main/docs/deploy_guidance.md",
            ),
            notes="16 GPUs span two VMs: more than one Dataflow worker holds. Serve it with "
            "`vllm serve` on a multi-node cluster and give the role `backend: openai`.",
        ),
        Preset(
            name="deepseek-v3",
            model="deepseek-ai/DeepSeek-V3",
            total_params_b=671,
            active_params_b=37,
            bytes_per_param=1,
            gpus=8,
            gpu="nvidia-h200-141gb",
            settings={
                **_GPU,
                "tensor_parallel_size": 8,
                "enable_expert_parallel": True,
                "trust_remote_code": True,
                "tool_call_mode": "native",
                "tool_call_parser": "deepseek_v3",
            },
            sources=(
                "https://docs.vllm.ai/projects/recipes/en/latest/DeepSeek/DeepSeek-V3.html",
                "https://docs.vllm.ai/en/latest/features/tool_calling.html",
            ),
            notes="vLLM's tool-calling docs pair the deepseek_v3 parser with the chat template "
            "examples/tool_chat_template_deepseekv3.jinja; bake it into the image if the "
            "checkpoint's own template lacks tools.",
        ),
        Preset(
            name="qwen3-30b-a3b",
            model="Qwen/Qwen3-30B-A3B",
            total_params_b=30.5,
            active_params_b=3.3,
            bytes_per_param=2,
            gpus=1,
            gpu="nvidia-h100-80gb",
            settings={**_QWEN3, "tensor_parallel_size": 1},
            sources=(
                "https://huggingface.co/Qwen/Qwen3-30B-A3B",
                "https://qwen.readthedocs.io/en/stable/deployment/vllm.html",
                "https://docs.sglang.io/cookbook/autoregressive/Qwen/Qwen3.md",
            ),
        ),
        Preset(
            name="qwen3-235b-a22b",
            model="Qwen/Qwen3-235B-A22B",
            total_params_b=235,
            active_params_b=22,
            bytes_per_param=2,
            gpus=8,
            gpu="nvidia-h100-80gb",
            settings={**_QWEN3, "tensor_parallel_size": 8},  # the sources use TP only
            sources=(
                "https://huggingface.co/Qwen/Qwen3-235B-A22B",
                "https://qwen.readthedocs.io/en/stable/deployment/vllm.html",
                "https://docs.sglang.io/cookbook/autoregressive/Qwen/Qwen3.md",
            ),
        ),
        Preset(
            name="qwen3-235b-a22b-fp8",
            model="Qwen/Qwen3-235B-A22B-Instruct-2507-FP8",
            total_params_b=235,
            active_params_b=22,
            bytes_per_param=1,
            gpus=4,
            gpu="nvidia-h100-80gb",
            settings={
                **_QWEN3,
                "tensor_parallel_size": 4,
                "chat_template_kwargs": {},  # the 2507 Instruct model does not think
                "engine_args": {"max_num_batched_tokens": 16384},
            },
            sources=(
                "https://github.com/gpustack/gpustack/blob/main/docs/performance-lab/"
                "qwen3-235b-a22b/h100.md",
            ),
            tokens_per_second=7787.0,
            throughput_source="GPUStack performance lab, ShareGPT, tuned vLLM, per TP4 replica",
            notes="Two engines fit one 8xH100 VM; a worker process holds one (see dataflow.md).",
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


def apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a ModelConfig mapping naming a preset) with the preset's fields filled in below it.

    Explicit fields win; `engine_args` and `chat_template_kwargs` merge key by key, so a config
    can change one engine argument without restating the others.
    """
    preset = get_preset(str(data["preset"]))
    merged: dict[str, Any] = {"model": preset.model, **preset.settings}
    for key, value in data.items():
        if key in ("engine_args", "chat_template_kwargs") and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged
