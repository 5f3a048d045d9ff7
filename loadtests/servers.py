"""Trivial servers: the generator's own ceiling is measured against them, and its tests use them.

HTTP paths that change the answer (anything else gets 200 at once):
  /delay/<us>     answer 200 after that many microseconds
  /status/<code>  answer with that status
  /close          close the connection without answering
The gRPC server answers every ModelInfer with an empty response for the requested model.

Run one: ``python -m loadtests.servers http --port 8000`` (or ``grpc``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import cast

import uvloop

_OK_BODY = b'{"ok":true}'
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}


def _response(status: int, body: bytes) -> bytes:
    reason = _REASONS.get(status, "Status")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


_OK = _response(200, _OK_BODY)


class _TrivialHttp(asyncio.Protocol):
    """Answers one request at a time per connection, which is all a keep-alive client sends."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._drain()

    def _drain(self) -> None:
        while not self._waiting and self._transport is not None:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self._buffer[:head_end]).lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : line_end if line_end >= 0 else None])
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            path = head.split(b" ", 2)[1].decode("latin-1")
            del self._buffer[:end]
            self._answer(path)

    def _answer(self, path: str) -> None:
        assert self._transport is not None
        if path.startswith("/delay/"):
            self._waiting = True
            self._answer_at(time.perf_counter() + int(path[7:]) / 1e6)
        elif path.startswith("/status/"):
            status = int(path[8:11])
            self._transport.write(_response(status, b'{"error":"as asked"}'))
        elif path == "/close":
            self._transport.close()
        else:
            self._transport.write(_OK)

    def _answer_at(self, deadline: float) -> None:
        # libuv timers run on a cached clock at millisecond granularity and may fire early;
        # re-arm until the real deadline so a delay is never shorter than asked.
        remaining = deadline - time.perf_counter()
        if remaining > 0:
            asyncio.get_running_loop().call_later(remaining, self._answer_at, deadline)
            return
        self._waiting = False
        if self._transport is not None:
            self._transport.write(_OK)
            self._drain()


async def serve_http(host: str, port: int, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_TrivialHttp, host, port, backlog=1024)
    await stop.wait()
    # No wait_closed(): it would wait for clients to hang up; exiting closes their sockets.
    server.close()


async def serve_grpc(host: str, port: int, stop: asyncio.Event) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelInfer(
            self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
        ) -> service_pb2.ModelInferResponse:
            return service_pb2.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )

    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await stop.wait()
    await server.stop(grace=None)


async def _main(kind: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await (serve_http if kind == "http" else serve_grpc)(host, port, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.servers", description=__doc__)
    parser.add_argument("kind", choices=["http", "grpc"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvloop.run(_main(args.kind, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
