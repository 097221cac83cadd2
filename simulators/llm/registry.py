"""Model config and one shared client per model per process.

Every role names a `ModelConfig`; roles whose configs are equal share one engine, because a
second copy of the same weights only halves the memory left for the KV cache.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from schemas.records import canonical_json
from simulators.llm.base import ChatModel, ToolCallMode

Backend = Literal["vllm", "openai", "scripted"]
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class ModelConfig(BaseModel):
    """Which model plays a role and how it is served."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = "vllm"
    model: str = Field(
        default=EMBEDDED_MODEL,
        description="A local checkpoint path, a served model name, or the embedded default.",
    )
    tool_call_mode: ToolCallMode = "json"
    # openai backend
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: SecretStr | None = Field(default=None, description="Never written to a manifest.")
    timeout_s: float = 120.0
    max_retries: int = 4
    # vllm backend
    max_model_len: int = 4096
    max_num_seqs: int = 64
    kv_cache_gib: float = 2.0
    dtype: str = "auto"
    enforce_eager: bool = True
    disable_any_whitespace: bool = True
    engine_args: dict[str, Any] = Field(default_factory=dict)
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

    def generation_bounds(self) -> tuple[int | None, int | None]:
        """(string chars, array items) caps for constrained generation."""
        if self.model == EMBEDDED_MODEL:
            return self.max_string_chars or 120, self.max_array_items or 4
        return self.max_string_chars, self.max_array_items

    def key(self) -> str:
        """Identity of the engine this config needs; equal keys share one client."""
        return canonical_json(self.model_dump(mode="json", exclude={"api_key"}))

    def display_name(self) -> str:
        return f"{self.backend}:{self.model}"


_lock = threading.Lock()
_clients: dict[str, ChatModel] = {}


def get_model(config: ModelConfig) -> ChatModel:
    """The process-wide client for `config`, created on first use."""
    with _lock:
        client = _clients.get(config.key())
        if client is None:
            client = _create(config)
            _clients[config.key()] = client
        return client


def register(config: ModelConfig, client: ChatModel) -> None:
    """Install a client for `config` (tests install scripted models this way)."""
    with _lock:
        _clients[config.key()] = client


def loaded() -> list[ChatModel]:
    with _lock:
        return list(_clients.values())


def clear() -> list[ChatModel]:
    """Forget all clients and return them so the caller can close them."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
        return clients


def _create(config: ModelConfig) -> ChatModel:
    if config.backend == "vllm":
        from simulators.llm.vllm_backend import VLLMChatModel

        return VLLMChatModel(config)
    if config.backend == "openai":
        from simulators.llm.openai_backend import OpenAIChatModel

        return OpenAIChatModel(config)
    if config.backend == "scripted":
        from simulators.llm.scripted import ScriptedModel

        return ScriptedModel(name=config.model, keep=100)
    raise ValueError(f"unknown backend {config.backend!r}")
