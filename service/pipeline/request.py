"""What travels with one request from its front to the backend, and what comes back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feature_store.store import Status, ViewRows
from service.protocol.errors import InvalidInput
from service.protocol.limits import DEFAULT_LIMITS, Limits
from service.routing.router import Decision


@dataclass(slots=True)
class RequestContext:
    """One request: who asked for what, by when, and (once routed) which version answers.

    The front makes it; the route stage sets `decision`; the score stage hands `deadline` and
    `priority` to the batcher, which hands its batch's earliest deadline to `Backend.infer`.
    """

    endpoint: str
    model: str
    # The version the client named (path, header or parameter); None: the routing policy picks.
    version: str | None = None
    request_id: str = ""
    # time.monotonic() by which the answer is due; None: no deadline.
    deadline: float | None = None
    # Batching priority level, 1 the highest; None: the model's default.
    priority: int | None = None
    # Outputs the client asked for; None: every output.
    outputs: list[str] | None = None
    # The front's limits: the pipeline checks the entity count against them before any read.
    limits: Limits = DEFAULT_LIMITS
    decision: Decision | None = None
    # Called once when the request enters a batcher's queue (a front may then watch for its
    # client going away: a queued request can still be withdrawn).
    on_queued: Callable[[], None] | None = None
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if not self.request_id:
            self.request_id = uuid.uuid4().hex

    def schedule(self, parameters: Mapping[str, Any]) -> None:
        """Triton's request parameters: `priority`, and `timeout` in microseconds, which
        tightens the deadline."""
        priority = parameters.get("priority")
        timeout = parameters.get("timeout")
        for name, value in (("priority", priority), ("timeout", timeout)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InvalidInput(f"parameter '{name}' must be an integer")
        if timeout is not None:
            if timeout <= 0:
                raise InvalidInput("parameter 'timeout' must be a positive number of microseconds")
            by = time.monotonic() + timeout / 1e6
            self.deadline = by if self.deadline is None else min(self.deadline, by)
        self.priority = priority or None

    def queued(self) -> None:
        hook, self.on_queued = self.on_queued, None
        if hook is not None:
            hook()


@dataclass(slots=True)
class Prediction:
    """Everything one served request produced (rendered by the fronts, logged by audit)."""

    request_id: str
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    entity_ids: list[str] | None = None
    features: list[ViewRows] = field(default_factory=list)
    route: str = "primary"
    # A shadow copy's primary request id.
    paired_with: str | None = None
    # Every contract broken, once each ("output:reason"), and the broken rows' own flags.
    flags: list[str] = field(default_factory=list)
    row_flags: dict[int, list[str]] = field(default_factory=dict)
    # Stage -> microseconds: features, infer, total.
    latency_us: dict[str, int] = field(default_factory=dict)

    def flags_per_row(self) -> list[list[str]]:
        rows = len(next(iter(self.outputs.values()))) if self.outputs else 0
        return [self.row_flags.get(i, []) for i in range(rows)]

    def feature_status(self) -> list[dict[str, str]]:
        """Per entity: view -> status label."""
        if not self.features or self.entity_ids is None:
            return []
        labels = [Status(s).label for s in Status]
        return [
            {rows.view.name: labels[rows.status[i]] for rows in self.features}
            for i in range(len(self.entity_ids))
        ]
