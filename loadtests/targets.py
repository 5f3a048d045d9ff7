"""Targets: send request i of a pre-built pool and say how it ended, HTTP or gRPC."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from loadtests.http_client import ConnectionFailed, HttpPool, encode_request
from loadtests.workloads import Workload, grpc_requests, http_requests

# wrk: the C client (loadtests/wrk.py), run by `execute` in place of a target.
Client = Literal["raw", "httpx", "wrk"]

TIMEOUT = "timeout"
CONNECTION = "connection"


class Target(Protocol):
    """``call`` returns None on success, else the error kind (``http_503``, ``timeout``, ...)."""

    size: int

    async def call(self, index: int, timeout_s: float) -> str | None: ...

    async def aclose(self) -> None: ...


def _http_outcome(status: int) -> str | None:
    return None if 200 <= status < 300 else f"http_{status}"


class RawHttpTarget:
    def __init__(self, host: str, port: int, requests: list[tuple[str, bytes]]) -> None:
        self._pool = HttpPool(host, port)
        self._requests = [
            encode_request("POST", f"{host}:{port}", path, body, "application/json")
            for path, body in requests
        ]
        self.size = len(self._requests)

    async def call(self, index: int, timeout_s: float) -> str | None:
        try:
            response = await self._pool.request(self._requests[index % self.size], timeout_s)
        except TimeoutError:
            return TIMEOUT
        except (ConnectionFailed, OSError):
            return CONNECTION
        return _http_outcome(response.status)

    async def aclose(self) -> None:
        self._pool.close()


class HttpxTarget:
    """The same requests through httpx, to cross-check the raw client and to show its cost."""

    def __init__(self, base_url: str, requests: list[tuple[str, bytes]], connections: int) -> None:
        import httpx

        # httpx logs every request at INFO: under load that is both noise and a bottleneck.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._httpx = httpx
        self._client = httpx.AsyncClient(base_url=base_url, limits=limits)
        self._requests = requests
        self._headers = {"content-type": "application/json"}
        self.size = len(requests)

    async def call(self, index: int, timeout_s: float) -> str | None:
        path, body = self._requests[index % self.size]
        httpx = self._httpx
        try:
            response = await self._client.post(
                path, content=body, headers=self._headers, timeout=timeout_s
            )
        except httpx.TimeoutException:
            return TIMEOUT
        except httpx.TransportError:
            return CONNECTION
        return _http_outcome(response.status_code)

    async def aclose(self) -> None:
        await self._client.aclose()


class GrpcTarget:
    """V2 ModelInfer on one grpc.aio channel: HTTP/2 multiplexes every in-flight call on it."""

    def __init__(self, address: str, requests: list[Any]) -> None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self._grpc = grpc
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._requests = requests
        self.size = len(requests)

    async def call(self, index: int, timeout_s: float) -> str | None:
        try:
            await self._stub.ModelInfer(self._requests[index % self.size], timeout=timeout_s)
        except self._grpc.aio.AioRpcError as exc:
            code = exc.code()
            return (
                TIMEOUT if code == self._grpc.StatusCode.DEADLINE_EXCEEDED else f"grpc_{code.name}"
            )
        return None

    async def aclose(self) -> None:
        await self._channel.close()


def check_loopback(host: str) -> None:
    """Load goes to this machine unless the caller says otherwise (``--allow-remote``)."""
    for *_, sockaddr in socket.getaddrinfo(host, None):
        if not ipaddress.ip_address(sockaddr[0]).is_loopback:
            raise ValueError(f"{host} is not a loopback address; pass --allow-remote to load it")


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http:// or grpc:// target."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "grpc"):
        raise ValueError(f"unsupported scheme in {url!r}: use http:// or grpc://")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r} needs a host and a port")
    return parts.scheme, parts.hostname, parts.port


def open_target(
    url: str, workload: Workload, *, client: Client = "raw", connections: int = 64
) -> Target:
    """http://host:port or grpc://host:port; the workload's requests are built here."""
    scheme, host, port = parse_url(url)
    if scheme == "grpc":
        return GrpcTarget(f"{host}:{port}", grpc_requests(workload))
    requests = http_requests(workload)
    if client == "httpx":
        return HttpxTarget(f"http://{host}:{port}", requests, connections)
    return RawHttpTarget(host, port, requests)
