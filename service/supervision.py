"""Runs `mlgate serve`'s processes: one uvicorn server, or uvicorn's supervisor of N workers.

What this adds to `uvicorn.run`: the exit status says whether the gateway could start (uvicorn's
supervisor exits 0 when a worker cannot, and a single server exits by the signal that stopped
it), and a worker that dies later is counted as it is replaced. Import it only after
PROMETHEUS_MULTIPROC_DIR is set: the supervisor counts into the workers' shared metrics.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from service.listen import PortUnavailable, http_socket
from service.metrics import WORKER_RESTARTS
from service.settings import Settings

log = logging.getLogger(__name__)


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, which also counts the workers it replaces and remembers a
    worker that could not start (uvicorn stops then, but exits 0)."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        super().__init__(config, sockets=[sock])
        self.startup_failed = False

    def keep_subprocess_alive(self) -> None:
        before = list(self.processes)
        super().keep_subprocess_alive()
        for old, new in zip(before, self.processes, strict=True):
            if new is not old:
                WORKER_RESTARTS.inc()
                log.warning("worker %s exited (%s); replaced by %s", old.pid, old.exitcode, new.pid)
        if any(p.exitcode == STARTUP_FAILURE for p in self.processes):
            self.startup_failed = True


def _stopped(sig: int, frame: FrameType | None) -> None:
    """The SIGTERM handler outside uvicorn's: uvicorn re-raises the signal that stopped it once
    it has shut down gracefully, and this ends the gateway with status 0, not by the signal."""


def run_gateway(settings: Settings) -> int:
    """Serve until stopped; the exit status: 0, or uvicorn's start-up failure status."""
    try:
        sock = http_socket(settings)
    except PortUnavailable as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    config = uvicorn.Config(
        "service.server:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.worker_count,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
    )
    if settings.worker_count > 1:
        supervisor = Supervisor(config, sock)
        supervisor.run()
        return STARTUP_FAILURE if supervisor.startup_failed else 0
    signal.signal(signal.SIGTERM, _stopped)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE
