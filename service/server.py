"""The composition root: builds what one process serves with and hands it to the fronts.

In dependency order: feature views and store, the inference thread pool, the model repository,
the audit log, the pipeline (the request path), the lifecycle (shared policy, loads and
unloads), then the gRPC front; the HTTP front is the ASGI app uvicorn runs, and this module
gives it its lifespan. Each front gets the one pipeline; neither front builds anything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from feature_store.loader import seed_synthetic
from feature_store.open import open_store
from feature_store.views import load_views
from service.admin import install_admin
from service.app import create_http_app
from service.audit import open_audit
from service.grpc_server import GrpcFront
from service.lifecycle import Lifecycle
from service.pipeline.features import Features
from service.pipeline.pipeline import Pipeline
from service.pipeline.served import BatchingChoice
from service.repository.loader import Repository
from service.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Pipeline, Lifecycle]]:
    """Everything one process serves with, for as long as the context lasts; stopped in the
    reverse order of its making (the gRPC front first, the thread pool last)."""
    async with AsyncExitStack() as stack:
        views = load_views(settings.views_path) if settings.views_path.exists() else {}
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
            batching=BatchingChoice(settings.batching, settings.batching_delay_us),
            shadow_queue_size=settings.shadow_queue_size,
            shadow_concurrency=settings.shadow_concurrency,
        )
        stack.push_async_callback(pipeline.close)
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
        yield pipeline, lifecycle


def create_app(settings: Settings) -> FastAPI:
    """The HTTP front, with the process's serving parts built in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with serving(settings) as (pipeline, lifecycle):
            app.state.pipeline = pipeline
            app.state.lifecycle = lifecycle
            yield

    app = create_http_app(settings, lifespan)
    install_admin(app, settings)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers: each process reads its settings from MLGATE_*."""
    return create_app(Settings())
