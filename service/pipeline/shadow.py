"""The shadow stage: copies of answered requests scored on shadow versions, and compared.

Copies leave after the primary answer is ready and never return to the request path: their
answers are audited, counted, and compared with the primary's.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from service import metrics
from service.pipeline.record import Record
from service.pipeline.request import Prediction, RequestContext
from service.pipeline.score import score
from service.pipeline.served import Registry, Served
from service.routing.config import OVERRIDE, SHADOW
from service.routing.mirror import Mirror
from service.routing.router import Decision, Router

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class ShadowJob:
    primary: Prediction
    version: str


class Shadow:
    def __init__(
        self, registry: Registry, router: Router, record: Record, *, size: int, workers: int
    ) -> None:
        self.registry = registry
        self.router = router
        self.record = record
        self.mirror: Mirror[ShadowJob] = Mirror(self._shadow, size=size, workers=workers)

    def copy(self, served: Served, decision: Decision, prediction: Prediction) -> None:
        """Queue the copies of an answered request for its model's shadow versions."""
        if decision.route == OVERRIDE:
            return  # a request that picked its version is a test, not traffic to compare
        for version in self.router.shadows(prediction.model, served.version, random.random):
            self.mirror.submit(ShadowJob(prediction, version), prediction.model, version)

    async def close(self) -> None:
        await self.mirror.close()

    async def _shadow(self, job: ShadowJob) -> None:
        """Score a primary request's inputs on a shadow version; log and compare the answer."""
        primary = job.primary
        served = self.registry.find(primary.model, job.version)
        if served is None:
            return  # unloaded since it was queued
        decision = Decision(job.version, SHADOW, f"{SHADOW}/{job.version}")
        batching = served.mv.config.dynamic_batching
        # The lowest priority: in a batcher shared with primary requests, copies go last.
        ctx = RequestContext(
            "shadow",
            primary.model,
            job.version,
            priority=batching.priority_levels if batching else None,
            decision=decision,
        )
        with self.registry.lease(served):
            try:
                outputs = await score(served, dict(primary.inputs), ctx)
            except Exception as exc:
                self.record.tally(served, decision, ctx.started, error=True, flagged=False)
                log.debug("shadow %s/%s failed: %s", primary.model, job.version, exc)
                return
            verdict = served.guard.check(outputs)
        took_us = round((time.perf_counter() - ctx.started) * 1e6)
        self.record.tally(
            served, decision, ctx.started, error=verdict.rejected, flagged=bool(verdict.reasons)
        )
        shadow = Prediction(
            request_id=ctx.request_id,
            model=primary.model,
            version=job.version,
            outputs=verdict.outputs,
            inputs=primary.inputs,
            entity_ids=primary.entity_ids,
            features=primary.features,
            route=SHADOW,
            paired_with=primary.request_id,
            flags=verdict.reasons,
            row_flags=verdict.row_flags,
            latency_us={"infer": took_us, "total": took_us},
        )
        self.record.log(shadow)
        if not verdict.rejected:
            self._compare(primary, shadow, decision.slot)

    def _compare(self, primary: Prediction, shadow: Prediction, slot: str) -> None:
        diff = abs_diff(primary.outputs, shadow.outputs)
        if diff is None:
            return
        model = primary.model
        tolerance = self.router.policy(model).routing.agreement_tolerance
        finite = np.isfinite(diff)
        # A row with a NaN or infinite answer on either side disagrees, by no measurable amount.
        disagreed = int(np.count_nonzero(~finite | (diff > tolerance)))
        labels = (model, primary.version, shadow.version)
        if disagreed:
            metrics.SHADOW_AGREEMENT.labels(*labels, "disagree").inc(disagreed)
        if len(diff) > disagreed:
            metrics.SHADOW_AGREEMENT.labels(*labels, "agree").inc(len(diff) - disagreed)
        histogram = metrics.SHADOW_ABS_DIFF.labels(*labels)
        for value in diff[finite].tolist():
            histogram.observe(value)
        self.router.tally.comparison(
            model,
            self.router.window_s(model),
            slot,
            rows=len(diff),
            disagreed=disagreed,
            diff=float(diff[finite].sum()),
            now=time.time(),
        )


def abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Per row, the largest absolute difference between two answers' shared numeric outputs
    (NaN where either is not finite); None when they share none of the same shape."""
    rows: np.ndarray | None = None
    for name, x in a.items():
        y = b.get(name)
        if y is None or y.shape != x.shape or x.dtype.kind not in "biuf" or not x.ndim:
            continue
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64)).reshape(len(x), -1).max(axis=1)
        rows = diff if rows is None else np.maximum(rows, diff)
    return rows
