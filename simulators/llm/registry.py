"""One shared client per model per process: the registry builds backends and nothing else.

Every role names a `ModelConfig`; roles whose configs are equal share one engine, because a
second copy of the same weights only halves the memory left for the KV cache.
"""

from __future__ import annotations

import threading

from simulators.llm.base import ChatModel
from simulators.llm.config import EMBEDDED_MODEL as EMBEDDED_MODEL  # older import path
from simulators.llm.config import ModelConfig

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
    """A new client for `config`; each backend is imported only when a config names it, so a
    run on an OpenAI-compatible server never loads vLLM (and the reverse)."""
    if config.backend == "vllm":
        from simulators.llm.vllm_backend import VLLMChatModel

        return VLLMChatModel(config)
    if config.backend == "vllm-server":
        from simulators.llm.server_backend import SharedVLLMChatModel

        return SharedVLLMChatModel(config)
    if config.backend == "openai":
        from simulators.llm.openai_backend import OpenAIChatModel

        return OpenAIChatModel(config)
    if config.backend == "scripted":
        from simulators.llm.scripted import ScriptedModel

        return ScriptedModel(name=config.model, keep=100)
    raise ValueError(f"unknown backend {config.backend!r}")
