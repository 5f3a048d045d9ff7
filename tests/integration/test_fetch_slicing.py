"""A large legal request does not stall small ones: its entities are fetched FETCH_SLICE at a
time, and the event loop runs other work between slices.

The same large fetch, from a real redis-server and from the embedded memory store, runs twice
in one test, sliced and in one piece, while a ticker task notes the longest time the loop went
without running it. Comparing the two in the same test keeps the assertion about slicing, not
about how loaded the machine is.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from feature_store.open import open_store
from feature_store.synthetic import seed_synthetic
from feature_store.views import load_views
from service.pipeline.features import FETCH_SLICE, FeaturePlan, Features
from service.repository.config import read_config
from tests.conftest import MODELS_DIR

ENTITIES = 50_000
SEEDED = 10_000
# Without slicing, the loop is held for the whole request's key building and row decoding;
# with it, for one slice's at a time: a hundred slices here, so a wide margin.
MIN_STALL_RATIO = 5.0
RUNS = 3


async def longest_stall(work: asyncio.Future[object]) -> float:
    """The longest the event loop went without running another task while `work` ran."""
    longest = 0.0
    last = time.perf_counter()
    while not work.done():
        await asyncio.sleep(0)
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    await work
    return longest


async def stall_of_one_large_fetch(store_url: str, fetch_slice: int) -> float:
    views = load_views(MODELS_DIR / "feature_views.yaml")
    spec = read_config(MODELS_DIR / "fraud_mlp" / "config.yaml").inputs[0]
    plan = FeaturePlan.build(spec, views)
    store = open_store(store_url)
    features = Features(store, views, coalesce=True, fetch_slice=fetch_slice)
    try:
        await seed_synthetic(store, views.values(), SEEDED)
        ids = [f"u{i % SEEDED}" for i in range(ENTITIES)]
        await features.fetch(plan, ids[:10])  # connections opened before the timing
        rows = asyncio.ensure_future(features.fetch(plan, ids))
        stall = await longest_stall(rows)
        assert [len(r.values) for r in rows.result()] == [ENTITIES] * len(plan.views)
        return stall
    finally:
        await features.close()


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_a_large_request_is_fetched_in_slices_that_let_other_requests_run(
    store: str, redis_url: str
) -> None:
    url = redis_url if store == "redis" else "memory://"
    # The least of a few runs: a preemption of the process on a busy machine is no stall of
    # the loop's making.
    whole = min([await stall_of_one_large_fetch(url, ENTITIES) for _ in range(RUNS)])
    sliced = min([await stall_of_one_large_fetch(url, FETCH_SLICE) for _ in range(RUNS)])
    assert whole > MIN_STALL_RATIO * sliced, (
        f"longest stall {whole:.4f}s whole, {sliced:.4f}s sliced"
    )
