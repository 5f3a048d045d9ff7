"""The composition root: builds what one process serves with and hands it to the fronts.

In dependency order: feature views and store, the inference thread pool, the model repository,
the audit log, the pipeline (the request path), the lifecycle (shared policy, loads and
unloads), then the gRPC front; the HTTP front is the ASGI app uvicorn runs, and this module
gives it its lifespan. Each front gets the one pipeline; neither front builds anything.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feature_store.open import open_store
from feature_store.synthetic import seed_synthetic
from feature_store.views import declared_views
from service.admin import install_admin
from service.app import create_http_app
from service.audit import open_audit
from service.drain import Drain
from service.grpc_server import GrpcFront
from service.lifecycle import Lifecycle
from service.loop_lag import watch_lag
from service.monitor.counts import LocalCounts, RedisCounts
from service.monitor.monitor import DriftMonitor
from service.pipeline.features import Features
from service.pipeline.pipeline import Pipeline
from service.pipeline.served import BatchingChoice
from service.repository.loader import Repository
from service.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def serving(
    settings: Settings, drain: Drain | None = None
) -> AsyncIterator[tuple[Pipeline, Lifecycle]]:
    """Everything one process serves with, for as long as the context lasts; stopped in the
    reverse order of its making (the gRPC front first, the thread pool last). When `drain`
    begins, the gRPC health service says NOT_SERVING."""
    async with AsyncExitStack() as stack:
        views = declared_views(settings.views_path)
        store = open_store(settings.feature_store)
        features = Features(store, views, coalesce=settings.coalesce_reads)
        stack.push_async_callback(features.close)
        if store.kind == "memory" and settings.demo_entities and views:
            await seed_synthetic(store, views.values(), settings.demo_entities)
        executor = ThreadPoolExecutor(
            max_workers=settings.inference_threads, thread_name_prefix="infer"
        )
        stack.callback(executor.shutdown, wait=False, cancel_futures=True)
        repository = await Repository.load(settings.models, views, executor=executor)
        audit = open_audit(settings.audit, spill_dir=settings.audit_spill_dir)
        if audit is not None:
            await audit.start()
            # Closed after the pipeline: the records of every answered request are flushed.
            stack.push_async_callback(audit.close)
        pipeline = Pipeline(
            repository.models,
            features,
            audit,
            batching=BatchingChoice(
                settings.batching, settings.batching_delay_us, settings.monitoring
            ),
            shadow_queue_size=settings.shadow_queue_size,
            shadow_concurrency=settings.shadow_concurrency,
        )
        stack.push_async_callback(pipeline.close)
        # Counts merge in the feature store's Redis when there is one: the fleet is judged as one.
        drift = DriftMonitor(
            pipeline.registry.drifts,
            RedisCounts(settings.feature_store) if store.kind != "memory" else LocalCounts(),
        )
        drift.start()
        stack.push_async_callback(drift.close)
        log.info(
            "serving %s from %s, features from %s, audit to %s",
            ", ".join(pipeline.registry.models) or "no models",
            settings.models,
            store.kind,
            settings.audit,
        )
        # Before any front opens: a worker takes up the shared routing policy first.
        lifecycle = await Lifecycle.start(pipeline, repository, settings)
        stack.push_async_callback(lifecycle.close)
        if settings.grpc_port is not None:
            grpc_front = await GrpcFront.start(pipeline, settings)
            stack.push_async_callback(grpc_front.stop)
            if drain is not None:
                drain.on_begin(grpc_front.drain)
        lag = asyncio.create_task(watch_lag(), name="loop-lag")
        stack.callback(lag.cancel)
        # Start-up leaves ~100k long-lived objects (modules, sessions, views, settings) that every
        # full collection would traverse again: tens of ms with the event loop stopped, the
        # slowest requests' wait. Frozen, a collection visits only what came after.
        gc.freeze()
        stack.callback(gc.unfreeze)
        yield pipeline, lifecycle


def create_app(settings: Settings) -> FastAPI:
    """The HTTP front, with the process's serving parts built in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        drain = Drain(settings.drain_delay_s)
        app.state.drain = drain
        async with serving(settings, drain) as (pipeline, lifecycle):
            app.state.pipeline = pipeline
            app.state.lifecycle = lifecycle
            # Hooked once everything serves; unhooked before anything stops.
            with drain.on_sigterm():
                yield

    app = create_http_app(settings, lifespan)
    install_admin(app, settings)
    app.add_middleware(StartupFailureInOneLine)
    return app


class StartupFailureInOneLine:
    """A process that cannot start (an unwritable spill directory, a taken gRPC port, a model
    that fails to load) says why in one line: Starlette would hand uvicorn the whole traceback
    to log. uvicorn then exits with its start-up failure status, and its supervisor stops."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent below, with the exception in one line
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except Exception as exc:
            if not held:
                raise
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            await send({"type": "lifespan.startup.failed", "message": f"cannot start: {reason}"})


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: each process reads its settings from MLGATE_*."""
    return create_app(Settings())
