"""The one request path: route -> features -> (batch) -> infer -> response.

Both fronts (HTTP and gRPC) call `Gateway.infer` or `Gateway.predict`; nothing here
knows about HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feature_store.coalescing import CoalescingReader
from feature_store.errors import EntityNotFound, FeatureStoreError, StoreUnavailable
from feature_store.loader import seed_synthetic
from feature_store.open import open_store
from feature_store.store import OnlineStore, Status, ViewRows
from feature_store.views import FeatureView, load_views
from service import __version__, metrics
from service.audit import AuditLog, AuditRecord, open_audit
from service.batching import Batcher
from service.guard import Guard, Verdict
from service.protocol.datatypes import numpy_dtype, v2_datatype
from service.protocol.errors import (
    BackendError,
    GatewayError,
    InvalidInput,
    NotFound,
    Unavailable,
    Unprocessable,
)
from service.protocol.v2 import InferRequest, InferResponse
from service.repository.config import InputSpec
from service.repository.loader import ModelVersion, Repository
from service.routing.config import OVERRIDE, SHADOW, initial_policy
from service.routing.mirror import Mirror
from service.routing.router import Decision, Router, explicit_version
from service.settings import Settings

log = logging.getLogger(__name__)

SERVER_NAME = "mlgate"
SERVER_VERSION = __version__
SERVER_EXTENSIONS = ["binary_tensor_data"]
# How long an unloaded or replaced version waits for its requests in flight before closing.
DRAIN_TIMEOUT_S = 30.0


@dataclass(slots=True)
class FeaturePlan:
    """How one model input is assembled from online features, worked out at start-up."""

    input_name: str
    entity: str
    views: list[FeatureView]
    dtype: np.dtype[Any]
    width: int
    # "view.feature" and, where unambiguous, bare "feature" -> column index.
    columns: dict[str, int]

    @classmethod
    def build(cls, spec: InputSpec, views: Mapping[str, FeatureView]) -> FeaturePlan:
        assert spec.features is not None
        chosen = [views[name] for name in spec.features.views]
        columns: dict[str, int] = {}
        bare_seen: dict[str, int] = {}
        col = 0
        for view in chosen:
            for name in view.feature_names:
                columns[f"{view.name}.{name}"] = col
                bare_seen[name] = bare_seen.get(name, 0) + 1
                columns.setdefault(name, col)
                col += 1
        for name, seen in bare_seen.items():
            if seen > 1:
                del columns[name]
        return cls(
            input_name=spec.name,
            entity=spec.features.entity,
            views=chosen,
            dtype=numpy_dtype(spec.datatype),
            width=col,
            columns=columns,
        )


@dataclass(slots=True)
class Served:
    """A loaded model version plus what the request path needs to serve it."""

    mv: ModelVersion
    inputs: dict[str, InputSpec]
    input_dtypes: dict[str, np.dtype[Any]]
    output_names: list[str]
    plan: FeaturePlan | None
    guard: Guard
    batcher: Batcher | None = None
    # Requests using this version now: a version taken out of service closes once none are left.
    inflight: int = 0
    drained: asyncio.Event | None = None


@dataclass(slots=True, frozen=True)
class Scheduling:
    """When a request must be answered by, and how urgent it is (1 = highest)."""

    deadline: float | None = None
    priority: int | None = None

    @classmethod
    def of(cls, request: InferRequest) -> Scheduling:
        return cls.from_parameters(request.parameters, request.deadline)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any], deadline: float | None) -> Scheduling:
        """Triton's request parameters: `priority` and `timeout` in microseconds."""
        priority = parameters.get("priority")
        timeout = parameters.get("timeout")
        for name, value in (("priority", priority), ("timeout", timeout)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InvalidInput(f"parameter '{name}' must be an integer")
        if timeout is not None:
            if timeout <= 0:
                raise InvalidInput("parameter 'timeout' must be a positive number of microseconds")
            by = time.monotonic() + timeout / 1e6
            deadline = by if deadline is None else min(deadline, by)
        return cls(deadline=deadline, priority=priority or None)


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


class Gateway:
    """Owns the repository, the feature store and the per-version serving state."""

    def __init__(
        self,
        repository: Repository,
        store: OnlineStore,
        views: Mapping[str, FeatureView],
        executor: ThreadPoolExecutor,
        audit: AuditLog | None = None,
        batching: bool = True,
        batching_delay_us: int | None = None,
        shadow_queue_size: int = 1024,
        shadow_concurrency: int = 2,
        coalesce_reads: bool = True,
    ) -> None:
        self.repository = repository
        self.store = store
        # Concurrent requests' reads share one store round trip (feature_store/coalescing.py).
        self._reader: OnlineStore | CoalescingReader = (
            CoalescingReader(store) if coalesce_reads else store
        )
        self.views = dict(views)
        self.audit = audit
        self._executor = executor
        self._batching = batching
        self._batching_delay_us = batching_delay_us
        self._served: dict[tuple[str, str], Served] = {}
        self.router = Router()
        for model in repository.models.values():
            for mv in model.versions.values():
                self._served[(model.name, mv.version)] = self._prepare(mv, batching)
            self.router.set(
                model.name,
                initial_policy(model.config.routing, model.default_version, model.versions),
            )
        self.mirror: Mirror[ShadowJob] = Mirror(
            self._shadow, size=shadow_queue_size, workers=shadow_concurrency
        )

    @classmethod
    async def start(cls, settings: Settings) -> Gateway:
        views = load_views(settings.views_path) if settings.views_path.exists() else {}
        store = open_store(settings.feature_store)
        if store.kind == "memory" and settings.demo_entities and views:
            await seed_synthetic(store, views.values(), settings.demo_entities)
        executor = ThreadPoolExecutor(
            max_workers=settings.inference_threads, thread_name_prefix="infer"
        )
        repository = await Repository.load(settings.models, views, executor=executor)
        audit = open_audit(settings.audit, spill_dir=settings.audit_spill_dir)
        if audit is not None:
            await audit.start()
        log.info(
            "serving %s from %s, features from %s, audit to %s",
            ", ".join(repository.models) or "no models",
            settings.models,
            store.kind,
            settings.audit,
        )
        return cls(
            repository,
            store,
            views,
            executor,
            audit,
            settings.batching,
            batching_delay_us=settings.batching_delay_us,
            shadow_queue_size=settings.shadow_queue_size,
            shadow_concurrency=settings.shadow_concurrency,
            coalesce_reads=settings.coalesce_reads,
        )

    async def close(self) -> None:
        await self.mirror.close()
        for served in self._served.values():
            if served.batcher is not None:
                await served.batcher.close()
        # Flush the audit queue first: records of requests already answered must not be lost.
        if self.audit is not None:
            await self.audit.close()
        await self.repository.close()
        if isinstance(self._reader, CoalescingReader):
            await self._reader.close()
        await self.store.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, mv: ModelVersion, batching: bool) -> Served:
        specs = {spec.name: spec for spec in mv.config.inputs}
        plans = [FeaturePlan.build(s, self.views) for s in specs.values() if s.features]
        if len(plans) > 1:
            # One entity-fed input per model keeps the entity id input unambiguous.
            raise ValueError(f"model {mv.model}: only one input may be built from features")
        served = Served(
            mv=mv,
            inputs=specs,
            input_dtypes={name: numpy_dtype(s.datatype) for name, s in specs.items()},
            output_names=[o.name for o in mv.config.outputs],
            plan=plans[0] if plans else None,
            guard=Guard(mv.config, mv.model, mv.version),
        )
        config = mv.config.dynamic_batching
        if config is not None and self._batching_delay_us is not None:
            # --batching-delay-us: one fixed wait for every model, to compare with adaptive.
            config = config.model_copy(
                update={"adaptive": False, "max_queue_delay_us": self._batching_delay_us}
            )
        if batching and config is not None and mv.config.max_batch_size > 0:
            served.batcher = Batcher(
                lambda inputs, deadline: self._run_backend(mv, inputs, deadline),
                max_batch_size=mv.config.max_batch_size,
                config=config,
                model=mv.model,
                version=mv.version,
            )
        return served

    # ---- health and metadata -------------------------------------------------------

    async def ready(self) -> bool:
        try:
            await self.store.ping()
        except FeatureStoreError:
            return False
        return bool(self._served)

    def served(self, model: str, version: str | None) -> Served:
        """`version` of `model`; without one (None or ""), the routing policy's stable one."""
        if not version:
            stable = self._served.get((model, self.router.stable(model) or ""))
            if stable is not None:
                return stable
        mv = self.repository.get(model, version)
        return self._served[(mv.model, mv.version)]

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": SERVER_EXTENSIONS}

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        served = self.served(model, version)
        config = served.mv.config
        batch = [-1] if config.max_batch_size > 0 else []
        return {
            "name": served.mv.model,
            "versions": sorted(self.repository.models[served.mv.model].versions, key=int),
            "platform": config.platform_of(served.mv.version),
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

    async def infer(
        self, model: str, version: str | None, request: InferRequest, endpoint: str
    ) -> InferResponse:
        """A V2 inference request; entity ids may stand in for the feature-built input."""
        with observe(endpoint) as labels:
            request_id = request.id or uuid.uuid4().hex
            version = explicit_version(version, None, request.parameters)
            key = self._entity_key(model, request.inputs) or request_id
            served, decision = self._route(model, version, key)
            labels.update(model=served.mv.model, version=served.mv.version)
            wanted = self._requested_outputs(served, request.outputs)
            inputs, entity_ids = self._validate(served, request.inputs)
            prediction = await self._run(
                served, decision, inputs, entity_ids, None, request_id, Scheduling.of(request)
            )
            outputs = {name: prediction.outputs[name] for name in wanted}
            return InferResponse(
                model_name=served.mv.model,
                model_version=served.mv.version,
                outputs=outputs,
                id=request.id,
                # V2 parameter values are scalars: the broken contracts, comma-separated.
                parameters={"flags": ",".join(prediction.flags)} if prediction.flags else {},
            )

    async def predict(
        self,
        model: str,
        version: str | None,
        entity_ids: Sequence[str],
        overrides: Mapping[str, Any] | None,
        request_id: str | None,
        scheduling: Scheduling | None = None,
    ) -> Prediction:
        """The entity-keyed API: features are fetched, optionally overridden, then scored."""
        with observe("predict") as labels:
            if not entity_ids or not all(isinstance(e, str) and e for e in entity_ids):
                raise InvalidInput("'entities' must be a non-empty list of non-empty strings")
            served, decision = self._route(model, version, entity_ids[0])
            labels.update(model=served.mv.model, version=served.mv.version)
            if served.plan is None:
                raise InvalidInput(f"model '{model}' takes no entity features; use the V2 infer")
            self._check_batch(served, len(entity_ids))
            return await self._run(
                served,
                decision,
                {},
                list(entity_ids),
                overrides,
                request_id or uuid.uuid4().hex,
                scheduling or Scheduling(),
            )

    # ---- routing -------------------------------------------------------------------

    def _route(self, model: str, version: str | None, key: str) -> tuple[Served, Decision]:
        """The version that answers: the one asked for, else the policy's choice for `key`."""
        if version:
            served = self.served(model, version)
            return served, Decision.override(served.mv.version)
        if model not in self.repository.models:
            self.repository.get(model)  # the NotFound that names the models
        decision = self.router.choose(model, key)
        chosen = self._served.get((model, decision.version))
        if chosen is None:
            # A policy another process published may name a version not loaded here yet.
            return self.served(model, None), self.router.fallback(model)
        return chosen, decision

    def _entity_key(self, model: str, inputs: Mapping[str, np.ndarray]) -> str | None:
        """A V2 request's first entity id, which keeps an entity on one version."""
        stable = self._served.get((model, self.router.stable(model) or ""))
        plan = stable.plan if stable is not None else None
        ids = inputs.get(plan.entity) if plan is not None else None
        if ids is None or ids.dtype.kind != "O" or not ids.size:
            return None
        first = ids.reshape(-1)[0]
        return first.decode(errors="replace") if isinstance(first, bytes) else str(first)

    def _tally(
        self, served: Served, decision: Decision, started: float, *, error: bool, flagged: bool
    ) -> None:
        """Count one prediction towards its route's metrics and rollout window."""
        seconds = time.perf_counter() - started
        model, version, route = served.mv.model, served.mv.version, decision.route
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

    @contextmanager
    def _lease(self, served: Served) -> Iterator[None]:
        served.inflight += 1
        try:
            yield
        finally:
            served.inflight -= 1
            if not served.inflight and served.drained is not None:
                served.drained.set()

    # ---- shadow copies -------------------------------------------------------------

    def _mirror(self, served: Served, decision: Decision, prediction: Prediction) -> None:
        """Queue the copies of an answered request for its model's shadow versions."""
        if decision.route == OVERRIDE:
            return  # a request that picked its version is a test, not traffic to compare
        for version in self.router.shadows(prediction.model, served.mv.version, random.random):
            self.mirror.submit(ShadowJob(prediction, version), prediction.model, version)

    async def _shadow(self, job: ShadowJob) -> None:
        """Score a primary request's inputs on a shadow version; log and compare the answer."""
        primary = job.primary
        served = self._served.get((primary.model, job.version))
        if served is None:
            return  # unloaded since it was queued
        decision = Decision(job.version, SHADOW, f"{SHADOW}/{job.version}")
        batching = served.mv.config.dynamic_batching
        # The lowest priority: in a batcher shared with primary requests, copies go last.
        scheduling = Scheduling(priority=batching.priority_levels if batching else None)
        started = time.perf_counter()
        with self._lease(served):
            try:
                outputs = await self._score(served, dict(primary.inputs), scheduling)
            except Exception as exc:
                self._tally(served, decision, started, error=True, flagged=False)
                log.debug("shadow %s/%s failed: %s", primary.model, job.version, exc)
                return
            verdict = served.guard.check(outputs)
        done = time.perf_counter()
        self._tally(
            served, decision, started, error=verdict.rejected, flagged=bool(verdict.reasons)
        )
        shadow = Prediction(
            request_id=uuid.uuid4().hex,
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
            latency_us={
                "infer": round((done - started) * 1e6),
                "total": round((done - started) * 1e6),
            },
        )
        if self.audit is not None:
            self.audit.submit(audit_record(shadow))
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

    # ---- model lifecycle -----------------------------------------------------------

    def loaded(self, model: str) -> list[str]:
        return list(self.repository.models[model].versions)

    async def install(self, mv: ModelVersion) -> None:
        """Serve `mv` (opened and warmed up) from now on; a version it replaces drains first."""
        served = self._prepare(mv, self._batching)
        self.repository.add(mv)
        old = self._served.get((mv.model, mv.version))
        self._served[(mv.model, mv.version)] = served
        if old is not None:
            await self._retire(old)

    async def uninstall(self, model: str, version: str) -> None:
        """Stop serving `version`; requests already on it finish first."""
        old = self._served.pop((model, version))
        self.repository.remove(model, version)
        await self._retire(old)

    async def _retire(self, served: Served) -> None:
        if served.inflight:
            served.drained = asyncio.Event()
            try:
                await asyncio.wait_for(served.drained.wait(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "%s version %s: %d requests still running after %.0f s; closing anyway",
                    served.mv.model,
                    served.mv.version,
                    served.inflight,
                    DRAIN_TIMEOUT_S,
                )
        if served.batcher is not None:
            await served.batcher.close()
        await served.mv.backend.close()

    # ---- the request path ----------------------------------------------------------

    async def _run(
        self,
        served: Served,
        decision: Decision,
        inputs: dict[str, np.ndarray],
        entity_ids: list[str] | None,
        overrides: Mapping[str, Any] | None,
        request_id: str,
        scheduling: Scheduling,
    ) -> Prediction:
        started = time.perf_counter()
        with self._lease(served):
            try:
                prediction, verdict = await self._predict(
                    served, inputs, entity_ids, overrides, request_id, scheduling, started
                )
            except Exception as exc:
                self._tally(served, decision, started, error=server_side(exc), flagged=False)
                raise
        prediction.route = decision.route
        self._tally(
            served, decision, started, error=verdict.rejected, flagged=bool(prediction.flags)
        )
        # A refused prediction is recorded too: what the model said and why it was refused.
        if self.audit is not None:
            self.audit.submit(audit_record(prediction))
        if verdict.rejected:
            raise Unprocessable(f"prediction refused by its output contract: {verdict.rejection}")
        self._mirror(served, decision, prediction)
        return prediction

    async def _predict(
        self,
        served: Served,
        inputs: dict[str, np.ndarray],
        entity_ids: list[str] | None,
        overrides: Mapping[str, Any] | None,
        request_id: str,
        scheduling: Scheduling,
        started: float,
    ) -> tuple[Prediction, Verdict]:
        features: list[ViewRows] = []
        if entity_ids is not None and served.plan is not None:
            if served.batcher is not None:
                served.batcher.admit()
            features = await self._fetch(served.plan, entity_ids)
            tensor = assemble(served.plan, features, len(entity_ids))
            if overrides:
                apply_overrides(served.plan, tensor, overrides)
            inputs[served.plan.input_name] = tensor
        fetched = time.perf_counter()
        outputs = await self._score(served, inputs, scheduling)
        verdict = served.guard.check(outputs)
        if verdict.needs_fallback_rows is not None:
            outputs = await self._fallback(served, inputs, verdict, scheduling)
        else:
            outputs = verdict.outputs
        done = time.perf_counter()
        prediction = Prediction(
            request_id=request_id,
            model=served.mv.model,
            version=served.mv.version,
            outputs=outputs,
            inputs=inputs,
            entity_ids=entity_ids,
            features=features,
            latency_us={
                "features": round((fetched - started) * 1e6),
                "infer": round((done - fetched) * 1e6),
                "total": round((done - started) * 1e6),
            },
            flags=verdict.reasons,
            row_flags=verdict.row_flags,
        )
        return prediction, verdict

    async def _score(
        self, served: Served, inputs: dict[str, np.ndarray], scheduling: Scheduling
    ) -> dict[str, np.ndarray]:
        if served.batcher is not None:
            return await served.batcher.submit(
                inputs, priority=scheduling.priority, deadline=scheduling.deadline
            )
        return await self._run_backend(served.mv, inputs, scheduling.deadline)

    async def _fallback(
        self,
        served: Served,
        inputs: dict[str, np.ndarray],
        verdict: Verdict,
        scheduling: Scheduling,
    ) -> dict[str, np.ndarray]:
        """Rows that broke their contract, scored again on the configured fallback version."""
        guard = served.guard
        assert guard.fallback_version is not None
        fallback = self.served(served.mv.model, guard.fallback_version)
        with self._lease(fallback):
            scores = await self._score(fallback, guard.fallback_inputs(inputs, verdict), scheduling)
            checked = fallback.guard.check(scores)
        if checked.rejected:
            raise Unprocessable(
                f"prediction refused by its output contract, and by its fallback version "
                f"{fallback.mv.version}'s: {checked.rejection}"
            )
        return guard.merge_fallback(verdict, checked.outputs)

    async def _fetch(self, plan: FeaturePlan, entity_ids: list[str]) -> list[ViewRows]:
        started = time.perf_counter()
        try:
            rows = await self._reader.read(plan.views, entity_ids)
        except EntityNotFound as exc:
            raise NotFound(str(exc)) from None
        except StoreUnavailable as exc:
            # The detail names internal hosts: it goes to the log, not to the client.
            log.warning("%s", exc)
            raise Unavailable("feature store unavailable; retry later") from None
        except FeatureStoreError as exc:
            raise BackendError(str(exc)) from None
        metrics.feature_fetch_latency(self.store.kind).observe(time.perf_counter() - started)
        for view_rows in rows:
            for status, count in view_rows.counts().items():
                if count:
                    metrics.feature_rows(view_rows.view.name, status).inc(count)
        return rows

    async def _run_backend(
        self, mv: ModelVersion, inputs: dict[str, np.ndarray], deadline: float | None
    ) -> dict[str, np.ndarray]:
        """One backend call over a whole batch (a request's, or the batcher's)."""
        started = time.perf_counter()
        outputs = await mv.backend.infer(inputs, deadline=deadline)
        metrics.inference_latency(mv.model, mv.version).observe(time.perf_counter() - started)
        return outputs

    # ---- validation ----------------------------------------------------------------

    def _requested_outputs(self, served: Served, requested: list[str] | None) -> list[str]:
        if requested is None:
            return served.output_names
        for name in requested:
            if name not in served.output_names:
                raise InvalidInput(
                    f"unknown output '{name}' for model '{served.mv.model}'; "
                    f"available: {', '.join(served.output_names)}"
                )
        return requested

    def _validate(
        self, served: Served, given: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str] | None]:
        """Check names, datatypes, shapes and values; split off entity ids."""
        plan = served.plan
        inputs: dict[str, np.ndarray] = {}
        entity_ids: list[str] | None = None
        batch: int | None = None
        for name, arr in given.items():
            if plan is not None and name == plan.entity:
                entity_ids = decode_entity_ids(name, arr)
                rows = len(entity_ids)
            else:
                spec = served.inputs.get(name)
                if spec is None:
                    raise InvalidInput(
                        f"unknown input '{name}' for model '{served.mv.model}'; "
                        f"expected: {', '.join(expected_inputs(served))}"
                    )
                check_tensor(served, spec, arr)
                inputs[name] = arr
                rows = arr.shape[0] if served.mv.config.max_batch_size > 0 else 1
            if batch is not None and rows != batch:
                raise InvalidInput(f"inputs disagree on the batch size ({batch} vs {rows})")
            batch = rows
        for name in served.inputs:
            fed_by_entity = plan is not None and name == plan.input_name and entity_ids is not None
            if name not in inputs and not fed_by_entity:
                raise InvalidInput(
                    f"missing input '{name}' for model '{served.mv.model}'; "
                    f"expected: {', '.join(expected_inputs(served))}"
                )
        if plan is not None and entity_ids is not None and plan.input_name in inputs:
            raise InvalidInput(f"give either '{plan.entity}' or '{plan.input_name}', not both")
        if batch is not None:
            self._check_batch(served, batch)
        return inputs, entity_ids

    def _check_batch(self, served: Served, rows: int) -> None:
        limit = served.mv.config.max_batch_size
        # A batcher splits larger requests into batches the model takes.
        if limit > 0 and rows > limit and served.batcher is None:
            raise InvalidInput(
                f"batch of {rows} rows exceeds max_batch_size {limit} of model '{served.mv.model}'"
            )


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


@dataclass(slots=True, frozen=True)
class ShadowJob:
    primary: Prediction
    version: str


def server_side(exc: Exception) -> bool:
    """Whether a failure is the version's doing (it counts against a canary), not the client's."""
    if not isinstance(exc, GatewayError):
        return True
    return exc.http_status >= 500 or isinstance(exc, Unprocessable)


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


def expected_inputs(served: Served) -> list[str]:
    names = list(served.inputs)
    if served.plan is not None:
        names.append(f"{served.plan.entity} (entity ids, in place of {served.plan.input_name})")
    return names


def check_tensor(served: Served, spec: InputSpec, arr: np.ndarray) -> None:
    name = spec.name
    dtype = served.input_dtypes[name]
    if arr.dtype != dtype:
        raise InvalidInput(
            f"input '{name}': datatype {v2_datatype(arr.dtype)} does not match "
            f"the model's {spec.datatype}"
        )
    dims = list(spec.dims)
    if served.mv.config.max_batch_size > 0:
        dims = [-1, *dims]
    if arr.ndim != len(dims) or any(d not in (-1, s) for d, s in zip(dims, arr.shape, strict=True)):
        raise InvalidInput(f"input '{name}': shape {list(arr.shape)} does not match {dims}")
    if served.mv.config.max_batch_size > 0 and arr.shape[0] == 0:
        raise InvalidInput(f"input '{name}': the batch is empty")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInput(f"input '{name}' contains NaN or infinite values")


def decode_entity_ids(name: str, arr: np.ndarray) -> list[str]:
    if arr.dtype.kind != "O" or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] != 1):
        raise InvalidInput(
            f"input '{name}': entity ids must be a BYTES tensor of shape [n] or [n, 1]"
        )
    ids = [x.decode() if isinstance(x, bytes) else x for x in arr.reshape(-1)]
    if not ids or not all(ids):
        raise InvalidInput(f"input '{name}': entity ids must be non-empty")
    return ids


def assemble(plan: FeaturePlan, rows: list[ViewRows], n: int) -> np.ndarray:
    """Concatenate the views' columns into the model's input tensor."""
    if len(rows) == 1:
        return rows[0].values.astype(plan.dtype, copy=False)
    out = np.empty((n, plan.width), dtype=plan.dtype)
    col = 0
    for view_rows in rows:
        width = view_rows.values.shape[1]
        out[:, col : col + width] = view_rows.values
        col += width
    return out


def apply_overrides(plan: FeaturePlan, tensor: np.ndarray, overrides: Mapping[str, Any]) -> None:
    """Request-time feature values: a number for every entity, or a list of one per entity."""
    for name, value in overrides.items():
        col = plan.columns.get(name)
        if col is None:
            raise InvalidInput(
                f"unknown feature '{name}' in 'features'; use 'view.feature' names "
                f"such as '{next(iter(plan.columns))}'"
            )
        try:
            values = np.asarray(value, dtype=tensor.dtype)
        except (TypeError, ValueError):
            raise InvalidInput(f"feature '{name}': override must be a number or list") from None
        if values.ndim > 1 or (values.ndim == 1 and len(values) != tensor.shape[0]):
            raise InvalidInput(
                f"feature '{name}': give one value or one per entity ({tensor.shape[0]})"
            )
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise InvalidInput(f"feature '{name}': override contains NaN or infinite values")
        tensor[:, col] = values


@contextmanager
def observe(endpoint: str) -> Iterator[dict[str, str]]:
    """Count and time one request; the outcome is 'ok' or the error class.

    Model and version labels are set by the caller once they are resolved, so an
    unknown name sent by a client never becomes a label value.
    """
    labels = {"model": "", "version": ""}
    started = time.perf_counter()
    outcome = "ok"
    try:
        yield labels
    except GatewayError as exc:
        outcome = type(exc).__name__
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
