"""The request path: each request goes through the stages in the order data flows.

Both fronts (HTTP and gRPC) hand a `RequestContext` and the decoded request to `Pipeline.infer`
or `Pipeline.predict`; nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from feature_store.store import ViewRows
from service import __version__
from service.audit import AuditLog
from service.monitor.feedback import Feedback
from service.monitor.quality import QualityConfig
from service.pipeline import validate
from service.pipeline.features import Features, apply_overrides, assemble
from service.pipeline.guard import GuardStage
from service.pipeline.record import Record, server_side
from service.pipeline.request import Prediction, RequestContext
from service.pipeline.route import Route
from service.pipeline.score import score
from service.pipeline.served import BatchingChoice, Registry, Served
from service.pipeline.shadow import Shadow
from service.protocol.errors import Unprocessable
from service.protocol.v2 import InferRequest, InferResponse
from service.repository.loader import Model
from service.routing.config import initial_policy
from service.routing.router import Router, explicit_version

SERVER_NAME = "mlgate"
SERVER_EXTENSIONS = ["binary_tensor_data"]


class Pipeline:
    """route -> validate -> features -> score -> guard -> record -> shadow."""

    def __init__(
        self,
        models: Mapping[str, Model],
        features: Features,
        audit: AuditLog | None = None,
        *,
        batching: BatchingChoice | None = None,
        shadow_queue_size: int = 1024,
        shadow_concurrency: int = 2,
    ) -> None:
        self.registry = Registry(features.views, batching or BatchingChoice())
        self.router = Router()
        for model in models.values():
            self.registry.add_model(model.name, model.config, model.versions)
            self.router.set(
                model.name,
                initial_policy(model.config.routing, model.default_version, model.versions),
            )
        self.route = Route(self.registry, self.router)
        self.features = features
        self.guard = GuardStage(self.registry)
        self.record = Record(audit, self.router)
        self.shadow = Shadow(
            self.registry,
            self.router,
            self.record,
            size=shadow_queue_size,
            workers=shadow_concurrency,
        )
        self.feedback = Feedback(audit, self.router, self._quality_of)

    async def close(self) -> None:
        """Stop shadow copies, then drain every batcher and close the versions. The features
        and the audit log belong to whoever made them."""
        await self.shadow.close()
        await self.registry.close()

    def _quality_of(self, model: str) -> tuple[QualityConfig | None, str]:
        config = self.registry.model(model).config
        return config.quality, config.quality_output() if config.quality else config.outputs[0].name

    # ---- health and metadata -------------------------------------------------------

    async def ready(self) -> bool:
        return bool(self.registry.models) and await self.features.ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": SERVER_EXTENSIONS}

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        served = self.route.version(model, version)
        config = served.mv.config
        batch = [-1] if config.max_batch_size > 0 else []
        # A version named in the path is described alone; the model, by every version loaded.
        versions = [served.version] if version else sorted(self.registry.loaded(model), key=int)
        return {
            "name": served.model,
            "versions": versions,
            "platform": config.platform_of(served.version),
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": batch + list(s.dims)}
                for s in config.inputs
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": batch + list(s.dims)}
                for s in config.outputs
            ],
        }

    # ---- the request path ----------------------------------------------------------

    async def infer(self, ctx: RequestContext, request: InferRequest) -> InferResponse:
        """A V2 inference request; entity ids may stand in for the feature-built input."""
        with self.record.observed(ctx.endpoint) as labels:
            ctx.version = explicit_version(ctx.version, None, request.parameters)
            ctx.schedule(request.parameters)
            served = self.route.resolve(ctx, self.route.entity_key(ctx.model, request.inputs))
            labels.update(model=served.model, version=served.version)
            wanted = validate.requested_outputs(served, ctx.outputs)
            inputs, entity_ids = validate.split_inputs(served, request.inputs, ctx.limits)
            prediction = await self._run(served, ctx, inputs, entity_ids, None)
            return InferResponse(
                model_name=served.model,
                model_version=served.version,
                outputs={name: prediction.outputs[name] for name in wanted},
                id=request.id,
                # V2 parameter values are scalars: the broken contracts, comma-separated.
                parameters={"flags": ",".join(prediction.flags)} if prediction.flags else {},
            )

    async def predict(
        self,
        ctx: RequestContext,
        entity_ids: Sequence[object],
        overrides: Mapping[str, Any] | None,
        parameters: Mapping[str, Any],
    ) -> Prediction:
        """The entity-keyed API: features are fetched, optionally overridden, then scored."""
        with self.record.observed(ctx.endpoint) as labels:
            ctx.version = explicit_version(ctx.version, None, parameters)
            ctx.schedule(parameters)
            ids = validate.entity_list(entity_ids, ctx.limits)
            served = self.route.resolve(ctx, ids[0])
            labels.update(model=served.model, version=served.version)
            validate.check_entities(served, ids)
            return await self._run(served, ctx, {}, ids, overrides)

    async def predict_instances(
        self, ctx: RequestContext, instances: Sequence[object], parameters: Mapping[str, Any]
    ) -> Prediction:
        """KServe V1 rows of model inputs: routed, batched, guarded and recorded as any other
        request, without a feature read (the client sent the features)."""
        with self.record.observed(ctx.endpoint) as labels:
            ctx.version = explicit_version(ctx.version, None, parameters)
            ctx.schedule(parameters)
            served = self.route.resolve(ctx, None)
            labels.update(model=served.model, version=served.version)
            given = validate.instance_inputs(served, instances)
            inputs, _ = validate.split_inputs(served, given, ctx.limits)
            return await self._run(served, ctx, inputs, None, None)

    async def _run(
        self,
        served: Served,
        ctx: RequestContext,
        inputs: dict[str, np.ndarray],
        entity_ids: list[str] | None,
        overrides: Mapping[str, Any] | None,
    ) -> Prediction:
        decision = ctx.decision
        assert decision is not None
        started = time.perf_counter()
        with self.registry.lease(served):
            try:
                features = await self._features(served, inputs, entity_ids, overrides)
                fetched = time.perf_counter()
                scores = await score(served, inputs, ctx)
                scored = time.perf_counter()
                outputs, verdict = await self.guard.check(served, inputs, scores, ctx)
            except Exception as exc:
                self.record.tally(served, decision, started, error=server_side(exc), flagged=False)
                served.stats.failed(time.perf_counter() - ctx.started)
                raise
        done = time.perf_counter()
        if verdict.rejected:
            served.stats.failed(done - ctx.started)
        else:
            served.stats.answered(done - ctx.started, fetched - started, done - scored)
        prediction = Prediction(
            request_id=ctx.request_id,
            model=served.model,
            version=served.version,
            outputs=outputs,
            inputs=inputs,
            entity_ids=entity_ids,
            features=features,
            route=decision.route,
            latency_us={
                "features": round((fetched - started) * 1e6),
                "infer": round((done - fetched) * 1e6),
                "total": round((done - started) * 1e6),
            },
            flags=verdict.reasons,
            row_flags=verdict.row_flags,
        )
        self.record.tally(
            served, decision, started, error=verdict.rejected, flagged=bool(prediction.flags)
        )
        # A refused prediction is recorded too: what the model said and why it was refused.
        self.record.log(prediction)
        if verdict.rejected:
            raise Unprocessable(f"prediction refused by its output contract: {verdict.rejection}")
        self.shadow.copy(served, decision, prediction)
        return prediction

    async def _features(
        self,
        served: Served,
        inputs: dict[str, np.ndarray],
        entity_ids: list[str] | None,
        overrides: Mapping[str, Any] | None,
    ) -> list[ViewRows]:
        """The entities' rows, assembled into the input they feed (in `inputs`)."""
        if entity_ids is None or served.plan is None:
            return []
        if served.batcher is not None:
            # An overloaded version sheds load before it spends a store round trip.
            served.batcher.admit()
        features = await self.features.fetch(served.plan, entity_ids)
        tensor = assemble(served.plan, features, len(entity_ids))
        if overrides:
            apply_overrides(served.plan, tensor, overrides)
        inputs[served.plan.input_name] = tensor
        return features
