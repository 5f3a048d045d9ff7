"""The record stage: what every request leaves behind, in metrics, the rollout window and audit.

Model and version labels are set once the route is known, so an unknown name a client sent
never becomes a label value. The request path never waits on the audit log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from service import metrics
from service.audit import AuditLog, AuditRecord
from service.pipeline.request import Prediction
from service.pipeline.served import Served
from service.protocol.errors import GatewayError, Unprocessable
from service.routing.router import Decision, Router

# The outcome of a request nobody is left to answer.
CANCELLED = "cancelled"


class Record:
    def __init__(self, audit: AuditLog | None, router: Router) -> None:
        self.audit = audit
        self.router = router

    @contextmanager
    def observed(self, endpoint: str) -> Iterator[dict[str, str]]:
        """Count and time one request; the outcome is 'ok', the error class, or 'cancelled'
        (its client went away, or its caller gave up on it: no answer left, and no audit
        record, since nothing was answered)."""
        labels = {"model": "", "version": ""}
        started = time.perf_counter()
        outcome = "ok"
        try:
            yield labels
        except GatewayError as exc:
            outcome = type(exc).__name__
            raise
        except asyncio.CancelledError:
            outcome = CANCELLED
            raise
        except Exception:
            outcome = "internal"
            raise
        finally:
            count, latency = metrics.request_children(
                labels["model"], labels["version"], endpoint, outcome
            )
            count.inc()
            latency.observe(time.perf_counter() - started)

    def tally(
        self, served: Served, decision: Decision, started: float, *, error: bool, flagged: bool
    ) -> None:
        """Count one prediction towards its route's metrics and rollout window."""
        seconds = time.perf_counter() - started
        model, version, route = served.model, served.version, decision.route
        outcome = "error" if error else "flagged" if flagged else "ok"
        metrics.routed(model, version, route, outcome).inc()
        if not error:
            metrics.routed_latency(model, version, route).observe(seconds)
        self.router.tally.request(
            model,
            self.router.window_s(model),
            decision.slot,
            error=error,
            flagged=flagged,
            seconds=seconds,
            now=time.time(),
        )

    def log(self, prediction: Prediction) -> None:
        if self.audit is not None:
            self.audit.submit(audit_record(prediction))


def audit_record(p: Prediction) -> AuditRecord:
    return AuditRecord(
        request_id=p.request_id,
        ts_ms=time.time_ns() // 1_000_000,
        model=p.model,
        version=p.version,
        route=p.route,
        paired_with=p.paired_with,
        entity_ids=p.entity_ids,
        features={rows.view.name: (rows.values, rows.status) for rows in p.features},
        inputs=p.inputs,
        outputs=p.outputs,
        flags=p.flags,
        latency_us=p.latency_us,
    )


def server_side(exc: Exception) -> bool:
    """Whether a failure is the version's doing (it counts against a canary), not the client's."""
    if not isinstance(exc, GatewayError):
        return True
    return exc.http_status >= 500 or isinstance(exc, Unprocessable)
