"""A small HTTP/1.1 client for one endpoint: keep-alive POSTs of JSON, nothing else.

An episode worker sends hundreds of requests a second to one server; its own CPU per request
caps what the server can be fed. httpx spends ~1.5-2 ms of CPU on each (anyio streams, httpcore's
pool bookkeeping, header models, socket introspection), most of a worker's budget. This client
does what the OpenAI backend needs and no more: one `asyncio.Protocol` per connection, the
request written in one call, the response parsed from the bytes as they come (Content-Length,
chunked, or read to close), connections kept alive and reused last-in first-out. Plain HTTP and
HTTPS; behind a proxy (`HTTPS_PROXY`...) the backend keeps using httpx, which honours those.

Errors a retry may cure (refused or dropped connections, timeouts, a malformed response) raise
`TransportError`; the caller decides whether to retry.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

HEADER_LIMIT = 64 * 1024
"""A response whose header block is larger than this is not an API answer."""
IDLE_S = 4.0
"""Idle connections older than this are closed instead of reused."""


class TransportError(Exception):
    """A request did not get a response: connection refused, dropped, timed out or garbled."""


class TransportTimeout(TransportError):
    """No complete response within the request's time limit."""


class ConnectFailed(TransportError):
    """No connection could be made: nothing listening, or the connect timed out."""


@dataclass
class Response:
    """A status, lower-cased headers and the (decoded) body."""

    status_code: int
    headers: dict[str, str]
    content: bytes


def uses_proxy(url: str) -> bool:
    """Whether the environment routes `url` through a proxy (then httpx handles it)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._try_parse(eof=False)

    def eof_received(self) -> bool:
        self._try_parse(eof=True)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._try_parse(eof=True)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            reason = f": {exc}" if exc else ""
            waiter.set_exception(TransportError(f"connection closed before the response{reason}"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _try_parse(self, eof: bool) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = _parse(self.buffer, eof)
        except TransportError as error:
            waiter.set_exception(error)
            self.abort()
            return
        if parsed is None:
            return
        response, used, keep_alive = parsed
        del self.buffer[:used]
        self.keep_alive = keep_alive and not eof and not self.buffer
        waiter.set_result(response)


def _parse(buffer: bytearray, eof: bool) -> tuple[Response, int, bool] | None:
    """A whole response from the start of `buffer` (bytes used, keep-alive), or None when more
    bytes are needed."""
    start = 0
    while True:  # skip interim 1xx responses
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) - start > HEADER_LIMIT:
                raise TransportError("response header block too large")
            if eof and len(buffer) > start:
                raise TransportError("connection closed inside the response headers")
            return None
        lines = bytes(buffer[start:end]).decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        try:
            version, status = status_line[0], int(status_line[1])
        except (IndexError, ValueError):
            raise TransportError(f"not an HTTP response: {lines[0][:80]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body_start = end + 4
        if 100 <= status < 200:
            start = body_start
            continue
        break
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (
        version != "HTTP/1.0" or "keep-alive" in connection
    )
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunked = _dechunk(buffer, body_start)
        if chunked is None:
            if eof:
                raise TransportError("connection closed inside a chunked body")
            return None
        body, used = chunked
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise TransportError("bad Content-Length") from None
        if len(buffer) - body_start < length:
            if eof:
                raise TransportError("connection closed inside the response body")
            return None
        body, used = bytes(buffer[body_start : body_start + length]), body_start + length
    elif status in (204, 304):
        body, used = b"", body_start
    else:  # the body runs to the end of the connection
        if not eof:
            return None
        body, used, keep_alive = bytes(buffer[body_start:]), len(buffer), False
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        try:
            body = zlib.decompress(body, 47 if encoding == "gzip" else zlib.MAX_WBITS)
        except zlib.error as error:
            raise TransportError(f"bad {encoding} body: {error}") from None
    return Response(status, headers, body), used, keep_alive


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """The body of a chunked message starting at `start` and the bytes it used, or None."""
    parts: list[bytes] = []
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise TransportError(f"bad chunk size {size_text[:20]!r}") from None
        at = line_end + 2
        if size == 0:
            if buffer[at : at + 2] == b"\r\n":
                return b"".join(parts), at + 2
            trailers_end = buffer.find(b"\r\n\r\n", at)
            return None if trailers_end < 0 else (b"".join(parts), trailers_end + 4)
        if len(buffer) < at + size + 2:
            return None
        parts.append(bytes(buffer[at : at + size]))
        at += size + 2


class HttpClient:
    """POSTs to one URL over kept-alive connections, from one event loop.

    Connections are made on demand and never more than the caller has requests in flight (the
    OpenAI backend bounds those); idle ones are reused newest first, so a burst's extra
    connections go cold and get closed by the server instead of each being kept half-used.
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{url}: only http:// and https:// URLs")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        self.timeout_s = timeout_s
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        default_port = self.port == (443 if self.tls else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not default_port:  # an IPv6 literal
            host_header = f"[{self.host}]:{self.port}"
        lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def post(self, body: bytes) -> Response:
        """POST `body` on an idle connection, or a new one.

        A connection idle for `IDLE_S` is closed rather than reused: servers close idle ones
        (uvicorn, under `vllm serve`, after 5 s), and a request sent just as that happens is lost
        (the caller's retry then sends it again).
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self.timeout_s
        connection = None
        while self._idle:
            candidate = self._idle.pop()
            if candidate.closed or now - candidate.idle_since > IDLE_S:
                candidate.close()
                self._open.discard(candidate)
                continue
            connection = candidate
            break
        if connection is None:
            connection = await self._connect(loop, deadline)
        return await self._exchange(connection, body, deadline)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                ),
                max(0.001, deadline - loop.time()),
            )
        except TimeoutError:
            raise ConnectFailed(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as error:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {error}") from None
        self._open.add(connection)
        return connection

    async def _exchange(self, connection: _Connection, body: bytes, deadline: float) -> Response:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        connection.waiter = waiter
        connection.buffer.clear()
        assert connection.transport is not None
        connection.transport.write(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            response = await waiter
        except BaseException:
            connection.abort()
            self._open.discard(connection)
            raise
        finally:
            timer.cancel()
            connection.waiter = None
        if connection.keep_alive and not connection.closed:
            connection.idle_since = loop.time()
            self._idle.append(connection)
        else:
            connection.close()
            self._open.discard(connection)
        return response

    async def aclose(self) -> None:
        """Close every connection, idle or busy."""
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(TransportTimeout("no response within the time limit"))
