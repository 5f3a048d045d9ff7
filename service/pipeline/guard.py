"""The guard stage: every answer checked against its version's output contract.

Rows that break it are flagged, clamped, defaulted, refused, or scored again on the contract's
fallback version (service/guard.py holds the contract; this stage runs the fallback).
"""

from __future__ import annotations

from service.batching import Tensors
from service.guard import Verdict
from service.pipeline.request import RequestContext
from service.pipeline.score import score
from service.pipeline.served import Registry, Served
from service.protocol.errors import Unprocessable


class GuardStage:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def check(
        self, served: Served, inputs: Tensors, outputs: Tensors, ctx: RequestContext
    ) -> tuple[Tensors, Verdict]:
        """The outputs to answer with, and the verdict on the version's own."""
        verdict = served.guard.check(outputs)
        if verdict.needs_fallback_rows is None:
            return verdict.outputs, verdict
        return await self._fallback(served, inputs, verdict, ctx), verdict

    async def _fallback(
        self, served: Served, inputs: Tensors, verdict: Verdict, ctx: RequestContext
    ) -> Tensors:
        """Rows that broke their contract, scored again on the configured fallback version."""
        guard = served.guard
        assert guard.fallback_version is not None
        with self.registry.lease(self.registry.get(served.model, guard.fallback_version)) as fb:
            scores = await score(fb, guard.fallback_inputs(inputs, verdict), ctx)
            checked = fb.guard.check(scores)
        if checked.rejected:
            raise Unprocessable(
                f"prediction refused by its output contract, and by its fallback version "
                f"{fb.version}'s: {checked.rejection}"
            )
        return guard.merge_fallback(verdict, checked.outputs)
