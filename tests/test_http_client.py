"""The OpenAI backend's own HTTP/1.1 client against raw servers on 127.0.0.1 that answer with
exactly the bytes a test gives: framings, keep-alive, closes, garbage and silence."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from typing import Any

import pytest

from simulators.llm import http
from simulators.llm.http import HttpClient, TransportError, TransportTimeout

Reply = Callable[[bytes], bytes | None]
"""Request bytes -> raw response bytes to send (None: send nothing, close)."""


async def _serve(reply: Reply, close_after: bool = False) -> tuple[asyncio.AbstractServer, dict]:
    seen: dict[str, Any] = {"connections": 0, "requests": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                request = head + await reader.readexactly(length)
                seen["requests"].append(request)
                answer = reply(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


def _url(server: asyncio.AbstractServer) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"


def _framed(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "\r\n".join([f"HTTP/1.1 {status}", *headers])
    return head.encode() + b"\r\n\r\n" + body


def _run(reply: Reply, requests: int = 1, close_after: bool = False, **client: Any) -> Any:
    async def main() -> Any:
        server, seen = await _serve(reply, close_after)
        async with server:
            c = HttpClient(_url(server), {"Content-Type": "application/json"}, **client)
            try:
                responses = [await c.post(b'{"n": %d}' % i) for i in range(requests)]
            finally:
                await c.aclose()
        return responses, seen

    return asyncio.run(main())


BODY = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()


def test_content_length_responses_reuse_one_connection() -> None:
    responses, seen = _run(
        lambda r: _framed(BODY, f"Content-Length: {len(BODY)}"), requests=5, timeout_s=5
    )
    assert [r.content for r in responses] == [BODY] * 5
    assert seen["connections"] == 1 and len(seen["requests"]) == 5
    first = seen["requests"][0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Host: 127.0.0.1:" in first and first.endswith(b'{"n": 0}')


def test_chunked_body_with_extensions_and_trailers() -> None:
    chunks = b"5;ext=1\r\n" + BODY[:5] + b"\r\n" + f"{len(BODY) - 5:x}".encode() + b"\r\n"
    chunks += BODY[5:] + b"\r\n0\r\nX-Trailer: yes\r\n\r\n"
    responses, seen = _run(
        lambda r: _framed(chunks, "Transfer-Encoding: chunked"), requests=2, timeout_s=5
    )
    assert [r.content for r in responses] == [BODY, BODY]
    assert seen["connections"] == 1


def test_connection_close_and_read_to_end() -> None:
    """HTTP/1.0 without a length: the body runs to the close; the next request reconnects."""
    responses, seen = _run(lambda r: b"HTTP/1.0 200 OK\r\n\r\n" + BODY, requests=2,
                           close_after=True, timeout_s=5)
    assert [r.content for r in responses] == [BODY, BODY]
    assert seen["connections"] == 2


def test_interim_response_status_headers_and_gzip() -> None:
    packed = gzip.compress(BODY)
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + _framed(
        packed, f"Content-Length: {len(packed)}", "Content-Encoding: gzip", "Retry-After: 3",
        status="429 Too Many Requests",
    )
    (response,), _ = _run(lambda r: raw, timeout_s=5)
    assert response.status_code == 429 and response.content == BODY
    assert response.headers["retry-after"] == "3"


def test_response_split_over_many_writes() -> None:
    async def main() -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            for byte in _framed(BODY, f"Content-Length: {len(BODY)}"):
                writer.write(bytes([byte]))
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            client = HttpClient(_url(server), {}, timeout_s=5)
            return await client.post(b"{}")

    assert asyncio.run(main()).content == BODY


@pytest.mark.parametrize(
    "raw",
    [
        None,  # closed without an answer
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",  # closed inside the body
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    ],
)
def test_broken_answers_are_transport_errors(raw: bytes | None) -> None:
    with pytest.raises(TransportError):
        _run(lambda r: raw, close_after=True, timeout_s=5)


def test_silence_times_out_and_refused_connection_fails() -> None:
    async def silent() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            client = HttpClient(_url(server), {}, timeout_s=0.2)
            await client.post(b"{}")

    with pytest.raises(TransportTimeout):
        asyncio.run(silent())

    async def refused() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        url = _url(server)
        server.close()
        await server.wait_closed()
        await HttpClient(url, {}, timeout_s=2).post(b"{}")

    with pytest.raises(TransportError, match="cannot connect"):
        asyncio.run(refused())


def test_idle_connections_past_their_age_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "IDLE_S", 0.0)
    _, seen = _run(lambda r: _framed(BODY, f"Content-Length: {len(BODY)}"), requests=3,
                   timeout_s=5)
    assert seen["connections"] == 3


def test_openai_backend_uses_httpx_only_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://10.1.2.3:8000/v1/chat/completions"
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert not http.uses_proxy(url)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert http.uses_proxy(url)
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    assert not http.uses_proxy(url)
