"""Which model plays a role and how it is served: the config every other module of the layer reads.

It imports nothing of the layer but the preset table, so backends, engines and the registry can all
import it without a circle.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from schemas.records import canonical_json
from simulators.llm.presets import apply_preset

ToolCallMode = Literal["json", "native"]
Backend = Literal["vllm", "vllm-server", "openai", "scripted"]
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
NOT_ENGINE_FIELDS = frozenset({
    "api_key", "preset", "weights_gib", "tokens_per_second", "engine_dir", "engine_linger_s",
    "engine_start_s", "engine_lease_timeout_s",
})
"""Fields that do not change the engine: a preset is only a way to write the others."""
HOW_NOT_WHAT_FIELDS = (
    "api_key", "server_wait_s", "engine_restarts", "engine_dir", "engine_linger_s",
    "engine_start_s", "engine_lease_timeout_s",
)
"""Fields a run's fingerprint leaves out: how a model is reached, not what it generates."""


class ModelConfig(BaseModel):
    """Which model plays a role and how it is served."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = "vllm"
    preset: str | None = Field(
        default=None,
        description="A name from simulators/llm/presets.py (e.g. qwen3-30b-a3b): fills in the "
        "model and its recommended vLLM settings; fields set here override it.",
    )
    model: str = Field(
        default=EMBEDDED_MODEL,
        description="A local checkpoint path, a served model name, or the embedded default.",
    )
    tool_call_mode: ToolCallMode = Field(
        default="json",
        description="`json`: calls as constrained JSON against the offered tools (any model). "
        "`native`: the model's own tool-call format, parsed by `tool_call_parser` (vllm) or "
        "by the server (openai).",
    )
    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM tool parser for native mode: kimi_k2, deepseek_v3, hermes, ...",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra chat-template variables (e.g. enable_thinking: false for Qwen3).",
    )
    # openai backend
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: SecretStr | None = Field(default=None, description="Never written to a manifest.")
    timeout_s: float = 120.0
    max_retries: int = 4
    server_wait_s: float = Field(
        default=300.0,
        ge=0.0,
        description="How long requests wait, retrying with backoff, for a server that refuses "
        "connections (down or restarting) before the run stops; not in the fingerprint.",
    )
    # vllm backend (also)
    engine_restarts: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Times a client restarts an in-process vLLM engine that died (EngineDead"
        "Error) before the run stops; not in the fingerprint.",
    )
    # vllm-server backend: one vLLM server per machine, shared by its worker processes
    engine_dir: str | None = Field(
        default=None,
        description="vllm-server: folder of the machine-wide engine state (lock, leases, logs); "
        "unset: $AGENTMILL_ENGINE_DIR, else agentmill-engines-UID in the temp dir. Every worker "
        "process of the machine must see the same folder.",
    )
    engine_linger_s: float = Field(
        default=10.0, ge=0.0,
        description="vllm-server: how long the server outlives its last client process, so a "
        "worker restarting between stages does not pay another start.",
    )
    engine_start_s: float = Field(
        default=1800.0, gt=0.0,
        description="vllm-server: how long clients wait for a starting server to answer.",
    )
    engine_lease_timeout_s: float = Field(
        default=10.0, gt=0.0,
        description="vllm-server: a client process whose lease (refreshed 5 times per timeout "
        "by a thread) is older than this has lost it, as has a supervisor whose heartbeat is: "
        "how clients in other pid namespaces (containers) are found gone. A client SIGKILLed "
        "in the supervisor's own pid namespace is dropped at once.",
    )
    server_command: list[str] | None = Field(
        default=None,
        description="vllm-server: the command that serves the model, replacing the `vllm serve` "
        "built from these settings (e.g. a site wrapper); `{port}` is replaced by the port.",
    )
    # vllm backend (and vllm-server)
    max_model_len: int = 4096
    max_num_seqs: int = 64
    kv_cache_gib: float | None = Field(
        default=2.0,
        description="KV cache size per engine. None: vLLM sizes it from gpu_memory_utilization "
        "(the GPU way); on CPU, from VLLM_CPU_KVCACHE_SPACE.",
    )
    dtype: str = "auto"
    quantization: str | None = Field(default=None, description="vLLM quantization, e.g. fp8.")
    tensor_parallel_size: int = Field(default=1, ge=1)
    enable_expert_parallel: bool = Field(
        default=False, description="Spread MoE experts over the tensor-parallel GPUs."
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Share of each GPU's memory; None: vLLM's 0.9."
    )
    trust_remote_code: bool = False
    enforce_eager: bool = True
    disable_any_whitespace: bool = Field(
        default=True,
        description="Constrained JSON without free whitespace: a weak model otherwise fills its "
        "token budget with blanks.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Any other AsyncEngineArgs field, passed as is."
    )
    # sizing (not engine identity)
    weights_gib: float | None = Field(
        default=None,
        description="Weights in memory, for the memory-budget check; unset: from the preset, "
        "the checkpoint's files, or the embedded model.",
    )
    tokens_per_second: float | None = Field(
        default=None,
        gt=0.0,
        description="Prompt + completion tokens per second one engine sustains, for "
        "`agentmill plan`; unset: the preset's stated figure, if any.",
    )
    # both
    max_in_flight: int = Field(
        default=512,
        ge=1,
        description="Requests in flight to this model per worker process (and, for `openai`, "
        "HTTP connections). Above the engine's own batch limit (vLLM's max_num_seqs, 256 on most "
        "GPUs) on purpose: the engine's queue then refills a finished slot at once, where a "
        "client at exactly the limit leaves each slot idle while it reads the answer and sends "
        "the next request (~0.92 of capacity instead of ~0.99 in benchmarks/throughput.py).",
    )
    max_string_chars: int | None = Field(
        default=None,
        description="Cap on every free-text string in constrained output (generation only). "
        "Weak models fill unbounded strings until the token budget ends; strong ones need none. "
        "Unset: 120 for the embedded model, no cap otherwise.",
    )
    max_array_items: int | None = Field(
        default=None, description="Cap on arrays in constrained output; unset: 4 / no cap."
    )
    max_prose_chars: int | None = Field(
        default=None, ge=1,
        description="Cap on prose (replies, users' messages) in constrained output. Unset: none, "
        "prose is left to the token budget so no reply a real model would finish is cut. Only "
        "for models that never stop a string on their own (random-weight test models).",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            return apply_preset(data)
        return data

    @model_validator(mode="after")
    def _check_tool_mode(self) -> ModelConfig:
        if (
            self.backend in ("vllm", "vllm-server")
            and self.tool_call_mode == "native"
            and not self.tool_call_parser
        ):
            raise ValueError(
                f"tool_call_mode native on the {self.backend} backend needs tool_call_parser "
                "(e.g. hermes, kimi_k2, deepseek_v3)"
            )
        return self

    def generation_bounds(self) -> tuple[int | None, int | None]:
        """(string chars, array items) caps for constrained generation."""
        if self.model == EMBEDDED_MODEL:
            return self.max_string_chars or 120, self.max_array_items or 4
        return self.max_string_chars, self.max_array_items

    def key(self) -> str:
        """Identity of the engine this config needs; equal keys share one client."""
        return canonical_json(self.model_dump(mode="json", exclude=NOT_ENGINE_FIELDS))

    def display_name(self) -> str:
        return f"{self.backend}:{self.model}"
