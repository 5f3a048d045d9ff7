"""Seeding: the demo feature views' synthetic entities, through the feature store's own loader."""

from __future__ import annotations

import time
from pathlib import Path


async def seed(redis_url: str, views_path: Path, n: int, seed: int = 0) -> float:
    """Write entities u0 .. u{n-1} of every view; returns the seconds it took."""
    # Imported here so `bench run` and its spawned generator processes stay light.
    from feature_store.open import open_store
    from feature_store.synthetic import seed_synthetic
    from feature_store.views import load_views

    views = load_views(views_path)
    store = open_store(redis_url)
    started = time.perf_counter()
    try:
        await seed_synthetic(store, views.values(), n, seed=seed)
    finally:
        await store.close()
    return time.perf_counter() - started
