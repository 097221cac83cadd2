"""Any OpenAI-compatible `/chat/completions` server (`vllm serve`, SGLang, a hosted API).

Not the openai SDK: it spends several milliseconds of CPU per request building and validating
pydantic objects, and an episode worker with hundreds of conversations in flight is bound by that
CPU, not by the server. Requests go through `simulators.llm.http`, a small keep-alive HTTP/1.1
client (~0.3 ms of CPU per request where httpx spent ~1.5-2: `benchmarks/openai_client_cpu.py`).

httpx stays for what that client does not do: a proxy from the environment (`HTTPS_PROXY`...)
and in-process transports (`simulators.llm.faults`, tests). Its connections total
`max_in_flight` (httpx caps a pool at 100 by default), split over several small pools, because
httpcore's pool scans every connection for every other one each time a request starts or ends
(quadratic in the pool size).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import ssl
import sys
import time
from typing import Any

import httpx

from schemas.records import Message, ToolCall
from simulators.llm.base import Completion, ConstrainedChatModel, RawCompletion, Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.errors import ModelError, ModelUnavailable
from simulators.llm.http import ConnectFailed, HttpClient, TransportError, uses_proxy
from simulators.llm.toolcall import native_calls

RETRYABLE_4XX = frozenset({408, 429})
"""Client errors worth a retry: a server-side timeout and rate limiting. Any 5xx is retried too."""
MALFORMED_RETRIES = 2
"""A 200 without choices or JSON is usually a gateway glitch; retry it, but only this often."""
EXCERPT_CHARS = 200
POOL_SIZE = 4
"""Connections per httpx pool; small pools keep httpcore's per-request bookkeeping cheap."""


class OpenAIChatModel(ConstrainedChatModel):
    """A chat model behind an OpenAI-compatible HTTP endpoint, shared by all episodes of a process.

    `requests` counts logical requests and `retries` the extra attempts they needed, so a run
    manifest can report how hard the server pushed back.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport` replaces the network (tests and `simulators.llm.faults` use it)."""
        self.name = config.display_name()
        self.bound_strings, self.bound_items = config.generation_bounds()
        self.bound_prose = config.max_prose_chars
        self.config = config
        self.native_tools = config.tool_call_mode == "native"
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.requests = 0
        self.retries = 0
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._secret = config.api_key.get_secret_value() if config.api_key else ""
        self._client: HttpClient | None = None
        self._pools: list[httpx.AsyncClient] = []
        self._free: list[int] = []
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rng = random.Random()
        self._tls: ssl.SSLContext | None = None
        self._transport = transport
        self._down_since: float | None = None

    # -- transport -------------------------------------------------------------------------------

    def _ensure_pools(self) -> asyncio.Semaphore:
        """Pools and the in-flight bound for the running loop; all are loop-bound, so made lazily.

        A process may run several loops in turn (one `asyncio.run` per bundle); pools left over
        from a finished loop cannot be reused, so they are dropped and new ones made (their
        sockets are left to the garbage collector: call `close` before a loop ends).
        """
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            limit = max(1, self.config.max_in_flight)
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if self._secret:
                headers["Authorization"] = f"Bearer {self._secret}"
            sizes = [POOL_SIZE] * (limit // POOL_SIZE) + (
                [limit % POOL_SIZE] if limit % POOL_SIZE else []
            )
            if self._tls is None:  # building one costs ~20 ms; share it across pools and loops
                self._tls = httpx.create_ssl_context()
            self._semaphore = asyncio.Semaphore(limit)
            self._loop = loop
            if self._transport is None and not uses_proxy(self._url):
                self._client = HttpClient(self._url, headers, self.config.timeout_s, self._tls)
                return self._semaphore
            self._pools = [
                httpx.AsyncClient(
                    verify=self._tls,
                    headers=headers,
                    timeout=httpx.Timeout(self.config.timeout_s),
                    limits=httpx.Limits(
                        max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0
                    ),
                    follow_redirects=False,
                    transport=self._transport,
                )
                for size in sizes
            ]
            self._free = sizes
        return self._semaphore

    async def close(self) -> None:
        """Close the connection pools; safe to call twice or from another loop."""
        pools, client, loop = self._pools, self._client, self._loop
        self._pools, self._free, self._semaphore, self._loop = [], [], None, None
        self._client = None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            for pool in pools:
                await pool.aclose()
            if client is not None:
                await client.aclose()

    async def _send(self, payload: bytes) -> httpx.Response | Any:
        """POST on the lean client, or on the httpx pool with most free connections (under the
        bound one always has a slot)."""
        if self._client is not None:
            return await self._client.post(payload)
        pools, free = self._pools, self._free
        index = free.index(max(free))
        free[index] -= 1
        try:
            return await pools[index].post(self._url, content=payload)
        finally:
            free[index] += 1

    async def _post(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """POST `body` with retries; the decoded response (at least one choice) and the retries
        it took.

        The semaphore is held across backoff sleeps, so a server answering 429 sees the pressure
        fall instead of the freed slots being refilled at once.
        """
        semaphore = self._ensure_pools()
        payload = json.dumps(body, ensure_ascii=False).encode()
        async with semaphore:
            self.requests += 1
            attempt = 0
            malformed = 0
            down_since: float | None = None
            waits = 0
            while True:
                retry_after: float | None = None
                try:
                    response = await self._send(payload)
                except (ConnectFailed, httpx.ConnectError, httpx.ConnectTimeout) as e:
                    # Nothing listening: the server is down or restarting. Wait for it, bounded
                    # by server_wait_s, without spending the retry budget on it.
                    now = time.monotonic()
                    down_since = down_since or now
                    if now - down_since >= self.config.server_wait_s:
                        raise ModelUnavailable(
                            f"{self.name}: {self._url} refused connections for "
                            f"{now - down_since:.0f} s ({type(e).__name__}); start the server "
                            "and run the same command again to resume"
                        ) from None
                    self._outage(type(e).__name__)
                    await self._refused()
                    waits += 1
                    self.retries += 1
                    left = self.config.server_wait_s - (now - down_since)
                    await asyncio.sleep(max(0.01, min(self._delay(waits, None), left)))
                    continue
                except (
                    TransportError,
                    httpx.TimeoutException,
                    httpx.NetworkError,
                    httpx.RemoteProtocolError,
                ) as e:
                    problem = f"{type(e).__name__}"
                except httpx.HTTPError as e:
                    raise ModelError(f"{self.name}: {type(e).__name__} for {self._url}") from None
                else:
                    status = response.status_code
                    if self._down_since is not None:
                        self._back()
                    if status == 200:
                        data = _decode(response.content)
                        if data is not None:
                            return data, attempt
                        problem = "200 without choices: " + self._excerpt(response.content)
                        malformed += 1
                        if malformed > MALFORMED_RETRIES:
                            raise ModelError(f"{self.name}: {problem}")
                    elif status >= 500 or status in RETRYABLE_4XX:
                        problem = f"HTTP {status}: {self._excerpt(response.content)}"
                        retry_after = _retry_after(response.headers.get("retry-after"))
                    else:
                        raise ModelError(
                            f"{self.name}: HTTP {status}: {self._excerpt(response.content)}"
                        )
                if attempt >= self.config.max_retries:
                    raise ModelError(
                        f"{self.name}: gave up after {attempt + 1} attempts; last: {problem}"
                    )
                attempt += 1
                self.retries += 1
                await asyncio.sleep(self._delay(attempt, retry_after))

    async def _refused(self) -> None:
        """Hook for each refused connection while requests wait for the server: a backend that
        owns its server (vllm-server) checks it here and may raise to stop waiting."""

    def _outage(self, error: str) -> None:
        """Say once per outage, on the console, that requests wait for the server."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            print(
                f"agentmill: model server {self.config.base_url} is not answering ({error}); "
                f"requests wait for it, retrying with backoff, up to "
                f"{self.config.server_wait_s:.0f} s",
                file=sys.stderr, flush=True,
            )

    def _back(self) -> None:
        if self._down_since is not None:
            print(
                f"agentmill: model server {self.config.base_url} answers again after "
                f"{time.monotonic() - self._down_since:.0f} s; the waiting requests go on",
                file=sys.stderr, flush=True,
            )
            self._down_since = None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, or the server's Retry-After when it gives one."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def _excerpt(self, body: bytes) -> str:
        """A short, single-line piece of an error body, with the API key scrubbed out."""
        text = body[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
        if self._secret:
            text = text.replace(self._secret, "***")
        return " ".join(text.split())[:EXCERPT_CHARS]

    def _body(self, messages: list[Any], sampling: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if self.config.chat_template_kwargs:  # vLLM and SGLang servers read this extension
            body["chat_template_kwargs"] = self.config.chat_template_kwargs
        return body

    # -- json tool-call mode ---------------------------------------------------------------------

    async def generate(
        self, messages: list[dict[str, str]], schema: dict[str, Any] | None, sampling: Sampling
    ) -> RawCompletion:
        body = self._body(messages, sampling)
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        data, retries = await self._post(body)
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return RawCompletion(
            text=(choice.get("message") or {}).get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason") or "stop",
            retries=retries,
        )

    # -- native tool-call mode -------------------------------------------------------------------

    async def complete_native(
        self, messages: list[Message], tools: list[dict[str, Any]], sampling: Sampling
    ) -> Completion:
        """Let the server's tool parser produce the calls."""
        body = self._body([m.model_dump(exclude_none=True) for m in messages], sampling)
        body["tools"] = tools
        data, retries = await self._post(body)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        text = message.get("content") or ""
        raw = RawCompletion(
            text,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            choice.get("finish_reason") or "stop",
            retries,
        )

        def parse() -> tuple[str, list[ToolCall], list[dict[str, Any]]]:
            salt = f"{len(messages)}:{sampling.seed}"
            calls, decoded = native_calls(message.get("tool_calls") or [], salt, text)
            return text, calls, decoded

        return self.native_completion(raw, sampling, parse)


def _decode(content: bytes) -> dict[str, Any] | None:
    """The response object if it is JSON with at least one choice, else None."""
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return None
    return data if data["choices"] else None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
