"""The route stage: the one place that decides which loaded version answers a request.

A version the client names answers it (route `override`); otherwise the model's routing policy
chooses by the request's key (its first entity id, so an entity sticks to its version), and the
policy's stable version is the one notion of a model's default.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.pipeline.request import RequestContext
from service.pipeline.served import Registry, Served
from service.protocol.errors import Unavailable
from service.routing.router import Decision, Router


class Route:
    def __init__(self, registry: Registry, router: Router) -> None:
        self.registry = registry
        self.router = router

    def resolve(self, ctx: RequestContext, key: str | None) -> Served:
        """The version that answers `ctx`, which records the decision."""
        if ctx.version:
            served = self.registry.get(ctx.model, ctx.version)
            ctx.decision = Decision.override(served.version)
            return served
        self.registry.model(ctx.model)  # the NotFound that names the models
        decision = self.router.choose(ctx.model, key or ctx.request_id)
        chosen = self.registry.find(ctx.model, decision.version)
        if chosen is None:
            # A policy another process published may name a version not loaded here yet.
            decision = self.router.fallback(ctx.model)
            chosen = self.stable(ctx.model)
        ctx.decision = decision
        return chosen

    def version(self, model: str, version: str | None) -> Served:
        """`version` of `model`; without one (None or ""), the policy's stable version."""
        if version:
            return self.registry.get(model, version)
        self.registry.model(model)
        return self.stable(model)

    def stable(self, model: str) -> Served:
        stable = self.router.stable(model) or ""
        served = self.registry.find(model, stable)
        if served is None:
            raise Unavailable(f"model '{model}': its stable version {stable} is not loaded")
        return served

    def entity_key(self, model: str, inputs: Mapping[str, np.ndarray]) -> str | None:
        """A V2 request's first entity id, which keeps an entity on one version."""
        stable = self.registry.find(model, self.router.stable(model) or "")
        plan = stable.plan if stable is not None else None
        ids = inputs.get(plan.entity) if plan is not None else None
        if ids is None or ids.dtype.kind != "O" or not ids.size:
            return None
        first = ids.reshape(-1)[0]
        return first.decode(errors="replace") if isinstance(first, bytes) else str(first)
