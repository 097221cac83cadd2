"""vLLM's engine in process (`AsyncLLM`): one engine per model per process, shared by all episodes.

The engine starts on the first request, not at construction, so building a client is cheap and a
pipeline that never calls a role never pays the ~40 s start. All calls must come from one asyncio
event loop (the pipeline's loop thread): the engine's output handler lives on the loop of the
first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

from schemas.records import Message
from simulators.llm.base import Completion, ConstrainedChatModel, RawCompletion, Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.embedded import resolve_model_path
from simulators.llm.errors import ModelError, ModelUnavailable
from simulators.llm.toolcall import native_calls

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

GIB = 1 << 30
engine_log = logging.getLogger("agentmill.engine")
"""Engine start and ready events (`extra`: engine_key, engine_event, seconds), so whoever shows
progress can say what the silence of a starting engine is."""


class _EngineDied(Exception):
    """The engine died under a request (EngineDeadError, or any error once it is `errored`)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class VLLMChatModel(ConstrainedChatModel):
    """A chat model served by an in-process vLLM engine, with xgrammar-constrained JSON."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = config.display_name()
        self.native_tools = config.tool_call_mode == "native"
        self.bound_strings, self.bound_items = config.generation_bounds()
        self.bound_prose = config.max_prose_chars
        self._engine: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._tool_parser: Any = None
        self._closed = False
        self._restarts = 0
        # Created unbound: asyncio primitives attach to the loop that first waits on them.
        self._start_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(config.max_in_flight)

    async def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any] | None, sampling: Sampling
    ) -> RawCompletion:
        return await self._generate(messages, schema, sampling)

    async def complete_native(
        self, messages: list[Message], tools: list[dict[str, Any]], sampling: Sampling
    ) -> Completion:
        """The model's own tool-call format, read by vLLM's parser."""
        chat = [_template_message(m) for m in messages]
        raw = await self._generate(chat, None, sampling, tools=tools)

        def parse() -> tuple[str, list[Any], list[dict[str, Any]]]:
            if self._tool_parser is None:
                self._tool_parser = make_tool_parser(
                    self._tokenizer, str(self.config.tool_call_parser)
                )
            salt = f"{len(messages)}:{sampling.seed}"
            return parse_native_tool_calls(self._tool_parser, raw.text, tools, salt)

        return self.native_completion(raw, sampling, parse)

    async def _generate(
        self,
        messages: list[dict[str, Any]],
        schema: dict[str, Any] | None,
        sampling: Sampling,
        tools: list[dict[str, Any]] | None = None,
    ) -> RawCompletion:
        async with self._slots:
            while True:
                engine = await self._ensure_engine()
                try:
                    final, prompt_ids, request_id = await self._request(
                        engine, messages, schema, sampling, tools
                    )
                    break
                except _EngineDied as died:
                    # Its in-flight requests all land here; the first restarts the engine, each
                    # then asks the new one again.
                    await self._restart(engine, died.error)
        if final is None or not final.outputs:
            raise ModelError(f"{self.name}: request {request_id} ended without output")
        choice = final.outputs[0]
        if choice.finish_reason not in ("stop", "length"):
            raise ModelError(f"{self.name}: request {request_id} ended with {choice.finish_reason}")
        return RawCompletion(
            text=choice.text,
            prompt_tokens=len(final.prompt_token_ids or prompt_ids),
            completion_tokens=len(choice.token_ids),
            finish_reason=choice.finish_reason,
        )

    async def _request(
        self,
        engine: AsyncLLM,
        messages: list[dict[str, Any]],
        schema: dict[str, Any] | None,
        sampling: Sampling,
        tools: list[dict[str, Any]] | None,
    ) -> tuple[Any, list[int], str]:
        """One generation on `engine`: its final output, prompt ids and request id; raises
        _EngineDied when the engine is dead."""
        # Cheap: `_import_vllm` has already imported these.
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import tokens_input
        from vllm.sampling_params import (
            RequestOutputKind,
            SamplingParams,
            StructuredOutputsParams,
        )
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt = self._tokenizer.apply_chat_template(
            messages,
            tools=tools,
            add_generation_prompt=True,
            tokenize=False,
            **self.config.chat_template_kwargs,
        )
        # The template already wrote any BOS; encoding must not add a second one.
        prompt_ids = self._tokenizer.encode(prompt, add_special_tokens=False)
        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
            # Native tool-call markers are special tokens in several models' vocabularies.
            skip_special_tokens=tools is None,
            structured_outputs=(
                StructuredOutputsParams(json=schema) if schema is not None else None
            ),
        )
        request_id = f"agentmill-{uuid.uuid4().hex}"
        final = None
        try:
            async for output in engine.generate(
                tokens_input(prompt_ids, prompt=prompt), params, request_id
            ):
                final = output
        except VLLMClientError as exc:
            raise ModelError(_request_error(self.name, exc, schema)) from exc
        except EngineDeadError as exc:
            raise _EngineDied(exc) from exc
        except Exception as exc:
            if isinstance(exc.__cause__, VLLMClientError | ValueError):
                raise ModelError(_request_error(self.name, exc.__cause__, schema)) from exc
            if getattr(engine, "errored", False):  # e.g. "RPC call to execute_model timed out"
                raise _EngineDied(exc) from exc
            raise ModelError(f"{self.name}: generation failed: {exc!r}") from exc
        return final, prompt_ids, request_id

    async def _ensure_engine(self) -> AsyncLLM:
        if self._engine is not None:
            return self._engine
        async with self._start_lock:
            if self._closed:
                raise ModelError(f"{self.name}: client is closed")
            if self._engine is None:
                # Starting takes tens of seconds; a thread keeps the loop serving other work.
                event = {"engine_key": self.config.key(), "engine_model": self.name}
                started = time.monotonic()
                engine_log.info("starting the engine for %s", self.name,
                                extra={**event, "engine_event": "start"})
                await asyncio.to_thread(_import_vllm)
                engine = await asyncio.to_thread(self._start_engine)
                self._tokenizer = engine.get_tokenizer()
                self._engine = engine
                seconds = time.monotonic() - started
                engine_log.info("engine for %s ready in %.0f s", self.name, seconds,
                                extra={**event, "engine_event": "ready", "seconds": seconds})
        return self._engine

    async def _restart(self, dead: AsyncLLM, error: BaseException) -> None:
        """Replace a dead engine (once, whoever notices first), with backoff, at most
        `engine_restarts` times per client; beyond that ModelUnavailable stops the run."""
        async with self._start_lock:
            if self._engine is dead:
                self._engine = None
                self._restarts += 1
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(dead.shutdown)
                limit = self.config.engine_restarts
                if self._restarts <= limit:
                    print(
                        f"agentmill: the vLLM engine of {self.name} died ({error}); restarting "
                        f"it ({self._restarts} of {limit}), its requests are asked again",
                        file=sys.stderr, flush=True,
                    )
                    await asyncio.sleep(min(30.0, 2.0 ** (self._restarts - 1)))
            if self._restarts > self.config.engine_restarts:
                raise ModelUnavailable(
                    f"{self.name}: the vLLM engine died {self._restarts} times (last: {error}); "
                    "with fewer engines or processes sharing the CPU, run the same command "
                    "again to resume"
                )

    def _start_engine(self) -> AsyncLLM:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        config = self.config
        extra = dict(config.engine_args)
        structured = {
            "backend": "xgrammar",
            "disable_any_whitespace": config.disable_any_whitespace,
            **extra.pop("structured_outputs_config", {}),
        }
        args: dict[str, Any] = {
            "model": resolve_model_path(config.model),
            "max_model_len": config.max_model_len,
            "max_num_seqs": config.max_num_seqs,
            "dtype": config.dtype,
            "quantization": config.quantization,
            "tensor_parallel_size": config.tensor_parallel_size,
            "enable_expert_parallel": config.enable_expert_parallel,
            "trust_remote_code": config.trust_remote_code,
            "enforce_eager": config.enforce_eager,
            "structured_outputs_config": StructuredOutputsConfig(**structured),
            "disable_log_stats": True,
        }
        if config.gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = config.gpu_memory_utilization
        if _on_cpu():
            # vLLM 0.32's CPU runner rewinds a seeded request's sampler after a partial (chunked)
            # prefill with a CUDA-only call, which kills the engine ("CPU Generator does not use
            # offset"). Prefilling whole prompts never takes that path.
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(config.max_model_len, 2048)
        # vLLM's CPU default sizes the KV cache from free memory and can ask for more than the
        # machine has. Per-engine bytes, not the process-wide VLLM_CPU_KVCACHE_SPACE, so two
        # engines in one process keep their own sizes; an explicit env var still wins.
        # `kv_cache_gib: null` leaves the size to vLLM (on GPUs, from gpu_memory_utilization).
        if config.kv_cache_gib is not None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = int(config.kv_cache_gib * GIB)
        args.update(extra)
        try:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        except Exception as exc:
            raise ModelError(f"{self.name}: vLLM engine failed to start: {exc}") from exc

    async def close(self) -> None:
        """Shut the engine down so no engine-core process outlives the client; idempotent."""
        async with self._start_lock:
            self._closed = True
            engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.shutdown)
            del engine
            gc.collect()  # else AsyncLLM.__del__ runs at interpreter exit and logs a TypeError
            multiprocessing.active_children()  # reaps the engine-core process vLLM killed


def _template_message(message: Message) -> dict[str, Any]:
    """An OpenAI message as chat templates take it: tool-call arguments decoded to objects."""
    out = message.model_dump(exclude_none=True)
    for call in out.get("tool_calls") or []:
        try:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        except (json.JSONDecodeError, TypeError):
            pass
    return out


def make_tool_parser(tokenizer: Any, name: str) -> Any:
    """vLLM's tool parser `name` (the one `vllm serve --tool-call-parser` would use) for
    `tokenizer`; built once per client, since several read the whole vocabulary at start."""
    from vllm.tool_parsers import ToolParserManager

    try:
        parser_class = ToolParserManager.get_tool_parser(name)
    except KeyError as exc:
        raise ModelError(f"unknown vLLM tool parser {name!r}") from exc
    try:
        return parser_class(tokenizer)
    except Exception as exc:
        raise ModelError(f"vLLM tool parser {name!r} does not fit this tokenizer: {exc}") from exc


def parse_native_tool_calls(
    parser: Any, text: str, tools: list[dict[str, Any]], salt: str
) -> tuple[str, list[Any], list[dict[str, Any]]]:
    """(content, tool calls, decoded calls) from `text` in the model's own format."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    request = ChatCompletionRequest(messages=[], tools=tools)  # type: ignore[arg-type]
    parsed = parser.extract_tool_calls(text, request)
    found = parsed.tool_calls if parsed.tools_called else []
    raw_calls = [
        {"function": {"name": c.function.name, "arguments": c.function.arguments}} for c in found
    ]
    calls, decoded = native_calls(raw_calls, salt, text)
    return parsed.content or "", calls, decoded


def _import_vllm() -> None:
    """vLLM's first import, from a frame that holds nothing.

    vLLM 0.32 keeps an import error (`vllm.multimodal.media.audio._torchcodec_import_exc`) whose
    traceback pins every frame that was on the stack during that import; were an engine among
    their locals, it would outlive `close` and log a TypeError from `__del__` at exit.
    """
    import vllm.v1.engine.async_llm  # noqa: F401


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _request_error(name: str, exc: BaseException, schema: dict[str, Any] | None) -> str:
    """An error message that points at the schema parts xgrammar refuses, when there are any.

    vLLM only says "features not supported by xgrammar", which does not say where.
    """
    message = f"{name}: vLLM rejected the request: {exc}"
    if schema is None:
        return message
    problems = xgrammar_schema_problems(schema)
    if problems:
        message += "; schema problems: " + "; ".join(problems)
    if problems or "schema" in str(exc) or "grammar" in str(exc):
        text = json.dumps(schema, ensure_ascii=False)
        message += f"; schema ({len(text)} chars): {text[:2000]}"
    return message


def xgrammar_schema_problems(schema: Any, path: str = "#") -> list[str]:
    """JSON-pointer paths of keywords that vLLM's xgrammar backend rejects (as of vLLM 0.32)."""
    if isinstance(schema, list):
        return [
            problem
            for index, item in enumerate(schema)
            for problem in xgrammar_schema_problems(item, f"{path}/{index}")
        ]
    if not isinstance(schema, dict):
        return []
    found = []
    if ("pattern" in schema or "format" in schema) and (
        "minLength" in schema or "maxLength" in schema
    ):
        found.append(f"{path}: pattern/format together with minLength/maxLength")
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        found.append(f"{path}: minLength {low} greater than maxLength {high}")
    for key in ("multipleOf", "uniqueItems", "contains", "minContains", "maxContains"):
        if key in schema:
            found.append(f"{path}: {key} is unsupported")
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions"):
            if isinstance(value, dict):  # maps names to schemas; names are not keywords
                for name, sub in value.items():
                    found.extend(xgrammar_schema_problems(sub, f"{path}/{key}/{name}"))
        elif key not in ("const", "enum", "default", "examples"):
            found.extend(xgrammar_schema_problems(value, f"{path}/{key}"))
    return found
