"""A minimal HTTP/1.1 keep-alive client on asyncio protocols, for load generation only.

httpx spends most of a request in pure-Python layers (models, pool bookkeeping, anyio); on
loopback that makes the generator, not the server, the bottleneck (docs/benchmarks.md has the
measured ceilings of both). This client sends pre-encoded request bytes over a pooled
connection and parses just enough of the response to find its status and end: one
connection per in-flight request, no pipelining, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import cast


class ConnectionFailed(Exception):
    """The connection could not be opened, or closed before the response was complete."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def encode_request(method: str, host: str, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._head_end = -1
        self._status = 0
        self._body_length = -1  # -1: until close, -2: chunked
        self._keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_end >= 0 and self._body_length == -1:
            waiter.set_result(Response(self._status, bytes(self._buffer[self._head_end :])))
        else:
            waiter.set_exception(ConnectionFailed(f"connection closed mid-response: {exc}"))

    def send(self, request: bytes, waiter: asyncio.Future[Response]) -> None:
        assert self.transport is not None
        self._buffer.clear()
        self._head_end = -1
        self._waiter = waiter
        self.reusable = False
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._head_end < 0 and not self._parse_head():
            return
        body = self._complete_body()
        if body is None:
            return
        waiter = self._waiter
        self._waiter = None
        self.reusable = self._keep_alive
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, body))

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        self._status = int(rest[:3])
        self._keep_alive = version == b"HTTP/1.1"
        self._body_length = -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._body_length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._body_length = -2
            elif name == b"connection":
                self._keep_alive = value.strip().lower() != b"close"
        if self._status in (204, 304) or 100 <= self._status < 200:
            self._body_length = 0
        self._head_end = end + 4
        return True

    def _complete_body(self) -> bytes | None:
        start = self._head_end
        if self._body_length >= 0:
            end = start + self._body_length
            return bytes(self._buffer[start:end]) if len(self._buffer) >= end else None
        if self._body_length == -2:
            return _dechunk(self._buffer, start)
        return None  # delimited by close: connection_lost completes it


def _dechunk(buffer: bytearray, start: int) -> bytes | None:
    """The body of a complete chunked message, or None while chunks are still arriving."""
    parts: list[bytes] = []
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        if size == 0:
            return b"".join(parts) if buffer.find(b"\r\n\r\n", line_end) >= 0 else None
        chunk_start = line_end + 2
        if len(buffer) < chunk_start + size + 2:
            return None
        parts.append(bytes(buffer[chunk_start : chunk_start + size]))
        pos = chunk_start + size + 2


class HttpPool:
    """Keep-alive connections to one host:port; the caller bounds how many run at once."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: deque[_Connection] = deque()
        self._all: set[_Connection] = set()

    async def request(self, request: bytes, timeout_s: float) -> Response:
        """Send pre-encoded request bytes; raises TimeoutError or ConnectionFailed."""
        loop = asyncio.get_running_loop()
        conn = await self._acquire(loop, timeout_s)
        waiter: asyncio.Future[Response] = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            conn.send(request, waiter)
            response = await waiter
        except BaseException:
            self._discard(conn)
            raise
        finally:
            timer.cancel()
        if conn.reusable and conn.transport is not None:
            self._idle.append(conn)
        else:
            self._discard(conn)
        return response

    async def _acquire(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
            self._all.discard(conn)
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._all.add(conn)
        return conn

    def _discard(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn.transport is not None:
            conn.transport.abort()

    def close(self) -> None:
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
