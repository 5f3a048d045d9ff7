"""The gateway's listening ports, taken by `mlgate serve` before anything starts.

uvicorn binds its port only after the application's start-up (models loaded, stores opened) and
reports a taken port in its own words, with an exit status of 0 under its worker supervisor; the
gRPC port would fail in every worker. Taking the HTTP socket first, and trying the gRPC port,
turns either into one line and a start-up failure before any work is done.
"""

from __future__ import annotations

import socket

from service.settings import Settings


class PortUnavailable(Exception):
    """A port the gateway is configured to listen on cannot be bound (in use, or not allowed)."""


def _bound(front: str, host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn does: a port left in TIME_WAIT by a previous run is free to take.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortUnavailable(f"{front} port {port} on {host}: {exc.strerror}") from exc
    return sock


def http_socket(settings: Settings) -> socket.socket:
    """The bound HTTP socket, inheritable by worker processes; PortUnavailable if the gRPC port
    cannot be bound either (the workers bind that one themselves, sharing it by SO_REUSEPORT)."""
    sock = _bound("HTTP", settings.host, settings.port)
    if settings.grpc_port:
        try:
            _bound("gRPC", settings.host, settings.grpc_port).close()
        except PortUnavailable:
            sock.close()
            raise
    sock.set_inheritable(True)
    return sock
