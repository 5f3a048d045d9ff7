"""The one registry of loaded model versions: the lifecycle changes it, the pipeline leases it.

A `Served` is a loaded version plus what the request path needs to serve it: its input specs,
feature plan, guard and batcher. A version taken out of service drains: it closes once the
requests leasing it are done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feature_store.views import FeatureView
from service import metrics
from service.batching import Batcher, Tensors
from service.guard import Guard
from service.monitor.drift import VersionDrift
from service.pipeline.features import FeaturePlan
from service.protocol.datatypes import numpy_dtype
from service.protocol.errors import NotFound
from service.repository.config import InputSpec, ModelConfig
from service.repository.loader import ModelVersion
from service.statistics import InferenceStatistics

log = logging.getLogger(__name__)

# How long an unloaded or replaced version waits for its requests in flight before closing.
DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class BatchingChoice:
    """The process's batching settings: on or off, and a fixed delay in place of config's."""

    enabled: bool = True
    delay_us: int | None = None
    # Drift monitoring of versions with a reference profile.
    monitoring: bool = True


@dataclass(slots=True)
class Served:
    """A loaded model version plus what the request path needs to serve it."""

    mv: ModelVersion
    inputs: dict[str, InputSpec]
    input_dtypes: dict[str, np.dtype[Any]]
    output_names: list[str]
    plan: FeaturePlan | None
    guard: Guard
    # The reload generation this process loaded (the routing policy counts reloads).
    generation: int = 0
    batcher: Batcher | None = None
    # Counts its scored rows for drift: set when it has a reference profile.
    drift: VersionDrift | None = None
    # Requests using this version now: a version taken out of service closes once none are left.
    inflight: int = 0
    drained: asyncio.Event | None = None
    stats: InferenceStatistics = field(default_factory=InferenceStatistics)

    @property
    def model(self) -> str:
        return self.mv.model

    @property
    def version(self) -> str:
        return self.mv.version

    async def run(self, inputs: Tensors, deadline: float | None) -> Tensors:
        """One backend call over a whole batch (a request's, or the batcher's)."""
        started = time.perf_counter()
        outputs = await self.mv.backend.infer(inputs, deadline=deadline)
        metrics.inference_latency(self.mv.model, self.mv.version).observe(
            time.perf_counter() - started
        )
        if self.drift is not None:
            self.drift.count_soon(inputs, outputs)
        return outputs


def prepare(
    mv: ModelVersion,
    views: Mapping[str, FeatureView],
    batching: BatchingChoice,
    generation: int = 0,
) -> Served:
    specs = {spec.name: spec for spec in mv.config.inputs}
    plans = [FeaturePlan.build(s, views) for s in specs.values() if s.features]
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
        generation=generation,
    )
    if batching.monitoring and mv.reference is not None and mv.config.monitoring.enabled:
        served.drift = VersionDrift(mv.model, mv.version, mv.reference, mv.config.monitoring)
    config = mv.config.dynamic_batching
    if config is not None and batching.delay_us is not None:
        # --batching-delay-us: one fixed wait for every model, to compare with adaptive.
        config = config.model_copy(
            update={"adaptive": False, "max_queue_delay_us": batching.delay_us}
        )
    if batching.enabled and config is not None and mv.config.max_batch_size > 0:
        served.batcher = Batcher(
            served.run,
            max_batch_size=mv.config.max_batch_size,
            config=config,
            model=mv.model,
            version=mv.version,
            stats=served.stats,
        )
    return served


@dataclass(slots=True)
class ServedModel:
    name: str
    # config.yaml as loaded at start: the model-wide settings (guard fallback, routing seed).
    config: ModelConfig
    versions: dict[str, Served] = field(default_factory=dict)  # in numeric order


class Registry:
    """Every model and its loaded versions, by name."""

    def __init__(self, views: Mapping[str, FeatureView], batching: BatchingChoice) -> None:
        self._views = views
        self._batching = batching
        self.models: dict[str, ServedModel] = {}

    def add_model(
        self, name: str, config: ModelConfig, versions: Mapping[str, ModelVersion]
    ) -> None:
        self.models[name] = ServedModel(
            name,
            config,
            {v: prepare(mv, self._views, self._batching) for v, mv in versions.items()},
        )

    def model(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(
                f"unknown model '{name}'; available: {', '.join(sorted(self.models))}"
            ) from None

    def find(self, model: str, version: str) -> Served | None:
        found = self.models.get(model)
        return None if found is None else found.versions.get(version)

    def get(self, model: str, version: str) -> Served:
        """`version` of `model`, or the NotFound that names what there is."""
        versions = self.model(model).versions
        try:
            return versions[version]
        except KeyError:
            raise NotFound(
                f"model '{model}' has no version '{version}'; available: {', '.join(versions)}"
            ) from None

    def drifts(self) -> list[VersionDrift]:
        """Every monitored version now served."""
        return [
            s.drift
            for model in self.models.values()
            for s in model.versions.values()
            if s.drift is not None
        ]

    def loaded(self, model: str) -> list[str]:
        return list(self.model(model).versions)

    @contextmanager
    def lease(self, served: Served) -> Iterator[Served]:
        served.inflight += 1
        try:
            yield served
        finally:
            served.inflight -= 1
            if not served.inflight and served.drained is not None:
                served.drained.set()

    async def install(self, mv: ModelVersion, generation: int) -> None:
        """Serve `mv` (opened and warmed up) from now on; a version it replaces drains first."""
        served = prepare(mv, self._views, self._batching, generation)
        versions = self.model(mv.model).versions
        old = versions.get(mv.version)
        versions[mv.version] = served
        self.model(mv.model).versions = dict(sorted(versions.items(), key=lambda kv: int(kv[0])))
        if old is not None:
            await _retire(old)

    async def uninstall(self, model: str, version: str) -> None:
        """Stop serving `version`; requests already on it finish first."""
        await _retire(self.model(model).versions.pop(version))

    async def close(self) -> None:
        for model in self.models.values():
            for served in model.versions.values():
                if served.batcher is not None:
                    await served.batcher.close()
        for model in self.models.values():
            for served in model.versions.values():
                await served.mv.backend.close()


async def _retire(served: Served) -> None:
    if served.inflight:
        served.drained = asyncio.Event()
        try:
            await asyncio.wait_for(served.drained.wait(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "%s version %s: %d requests still running after %.0f s; closing anyway",
                served.model,
                served.version,
                served.inflight,
                DRAIN_TIMEOUT_S,
            )
    if served.batcher is not None:
        await served.batcher.close()
    await served.mv.backend.close()
