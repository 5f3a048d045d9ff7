"""Label feedback: true labels, arriving hours after their predictions, joined to what the audit
log recorded, appended to it, and counted into realised quality.

A label finds its prediction through the audit sink's index (service.audit.index): by request
id, or by entity and time. The joined labels go back into the audit log as a record of route
`feedback` whose `paired_with` is the prediction's request id and whose output `label` holds
the labels (one row per prediction row), so `mlgate audit export` carries them beside the
predictions. Their counts (service.monitor.quality) go into two windows of the rollout tally,
which every process ships to the policy store: the version's quality window (the gauges) and,
when the model's policy judges a canary, the rollout window under the route that served the
prediction (guarded rollout compares the canary's quality with the stable version's).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from service import metrics
from service.audit import AuditLog, AuditRecord
from service.audit.index import Recorded
from service.monitor.quality import QualityConfig, check_labels, label_counts
from service.protocol.bodies import FeedbackBody
from service.protocol.errors import Conflict, InvalidInput, NotFound
from service.routing.config import CANARY, PRIMARY, ModelPolicy
from service.routing.rollout import SlotStats
from service.routing.router import Router

FEEDBACK_ROUTE = "feedback"
LABEL_OUTPUT = "label"
# The slot of a version's labels in its quality window.
QUALITY_SLOT = "quality"

# model -> (quality section or None, the output labels are scored against); NotFound for a
# model that is not served.
QualityOf = Callable[[str], tuple[QualityConfig | None, str]]


class Feedback:
    def __init__(self, audit: AuditLog | None, router: Router, quality_of: QualityOf) -> None:
        self._audit = audit
        self._router = router
        self._quality_of = quality_of

    async def submit(self, body: FeedbackBody) -> dict[str, Any]:
        """Join `body`'s labels to their prediction; NotFound when there is none."""
        quality, output = self._quality_of(body.model)
        if self._audit is None:
            raise Conflict("label feedback needs an audit log (--audit): there is nothing to join")
        found = await self._find(body)
        if found is None:
            _count(body.model, "", "unmatched", len(body.labels))
            raise NotFound(f"no recorded prediction of model '{body.model}' {_key(body)}")
        scores = found.outputs.get(output)
        if scores is None:
            _count(found.model, found.version, "invalid", len(body.labels))
            raise InvalidInput(f"the recorded prediction has no output '{output}'")
        scores = scores.reshape(len(scores), -1)
        if body.entity is not None:
            assert found.entity_ids is not None
            row = found.entity_ids.index(body.entity)
            scores = scores[row : row + 1]
        labels = np.asarray(body.labels, dtype=np.float64)
        problem = check_labels(quality, scores, labels) if quality is not None else None
        if problem is None and len(labels) != len(scores):
            problem = f"{len(labels)} label(s) for a prediction of {len(scores)} row(s)"
        if problem is not None:
            _count(found.model, found.version, "invalid", len(labels))
            raise InvalidInput(problem)
        now_ms = time.time_ns() // 1_000_000
        self._audit.submit(_feedback_record(found, body, labels, now_ms))
        if quality is not None:
            self._tally(found, quality, label_counts(quality, scores, labels), now_ms / 1000)
        _count(found.model, found.version, "joined", len(labels))
        return {
            "model": found.model,
            "model_version": found.version,
            "request_id": found.request_id,
            "route": found.route,
            "joined": len(labels),
            "label_delay_ms": now_ms - found.ts_ms,
        }

    async def _find(self, body: FeedbackBody) -> Recorded | None:
        assert self._audit is not None
        index = self._audit.index
        if body.request_id is not None:
            return await index.by_id(body.model, body.request_id)
        assert body.entity is not None and body.ts_ms is not None
        return await index.near(body.model, body.entity, body.ts_ms, body.within_ms)

    def _tally(
        self, found: Recorded, quality: QualityConfig, counts: dict[str, float], now: float
    ) -> None:
        tally, model = self._router.tally, found.model
        tally.labels(model, quality.window_s, f"{QUALITY_SLOT}/{found.version}", counts, now)
        policy = self._router.policy(model)
        slot = _rollout_slot(policy, found)
        if slot is not None and policy.routing.rollback is not None:
            tally.labels(model, self._router.window_s(model), slot, counts, now)


class QualityGauges:
    """Publishes each version's realised quality from the fleet's counts of its quality window;
    a version whose labels have all left the window loses its quality gauge."""

    def __init__(self) -> None:
        self._shown: dict[str, set[str]] = {}

    def publish(self, model: str, metric: str, window: Mapping[str, SlotStats]) -> None:
        shown: set[str] = set()
        for slot, stats in window.items():
            route, _, version = slot.partition("/")
            if route != QUALITY_SLOT:
                continue
            value = stats.quality.value(metric)
            metrics.MODEL_QUALITY_WINDOW_LABELS.labels(model, version).set(stats.quality.labels)
            if value is not None:
                metrics.MODEL_QUALITY.labels(model, version, metric).set(value)
                shown.add(version)
        for version in self._shown.get(model, set()) - shown:
            metrics.MODEL_QUALITY_WINDOW_LABELS.labels(model, version).set(0)
            with contextlib.suppress(KeyError):
                metrics.MODEL_QUALITY.remove(model, version, metric)
        self._shown[model] = shown


def _rollout_slot(policy: ModelPolicy, found: Recorded) -> str | None:
    """The rollout slot the prediction counted towards, if it is still judged: the stable
    version's, or the current canary's since it last entered traffic."""
    canary = policy.routing.canary
    if found.route == PRIMARY and found.version == policy.stable:
        return policy.primary_slot()
    if (
        found.route == CANARY
        and canary is not None
        and canary.version == found.version
        and found.ts_ms >= policy.canary_since_ms
    ):
        return policy.canary_slot()
    return None


def _feedback_record(
    found: Recorded, body: FeedbackBody, labels: np.ndarray, now_ms: int
) -> AuditRecord:
    return AuditRecord(
        request_id=uuid.uuid4().hex,
        ts_ms=now_ms,
        model=found.model,
        version=found.version,
        route=FEEDBACK_ROUTE,
        entity_ids=[body.entity] if body.entity is not None else found.entity_ids,
        features={},
        inputs={},
        outputs={LABEL_OUTPUT: labels.reshape(-1, 1)},
        flags=[],
        latency_us={"label_delay": (now_ms - found.ts_ms) * 1000},
        paired_with=found.request_id,
    )


def _key(body: FeedbackBody) -> str:
    if body.request_id is not None:
        return f"with request id '{body.request_id}'"
    return f"for entity '{body.entity}' within {body.within_ms} ms of {body.ts_ms}"


def _count(model: str, version: str, outcome: str, labels: int) -> None:
    metrics.FEEDBACK_LABELS.labels(model, version, outcome).inc(labels)
