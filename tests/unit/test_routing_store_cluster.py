"""The Redis policy store on a real 3-master Redis Cluster: one slot for every key, and a change
channel that outlives the node it was heard through. (The behaviour every store shares, the
cluster included, is in test_routing_store.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from loadtests.processes import RedisCluster
from service.routing.policy_store import Doc, RedisPolicyStore


@pytest.fixture
async def pair(cluster: RedisCluster) -> AsyncIterator[tuple[RedisPolicyStore, RedisPolicyStore]]:
    stores = (RedisPolicyStore(cluster.url), RedisPolicyStore(cluster.url))
    yield stores
    for store in stores:
        await store.close()


def bump(doc: Doc | None) -> Doc:
    return {"revision": (doc or {}).get("revision", 0) + 1}


async def test_every_key_of_the_store_lives_in_one_slot(
    cluster: RedisCluster, pair: tuple[RedisPolicyStore, RedisPolicyStore]
) -> None:
    a, _ = pair
    for model in ("fraud", "churn", "ltv"):
        await a.update(model, bump)
    await a.add_counts({f"w|{i}": {"n": 1} for i in range(8)}, ttl_s=30)
    keys = {port: cluster.cli(port, "keys", "*").split() for port in cluster.ports}
    holding = [port for port, found in keys.items() if found]
    assert len(holding) == 1, f"the store's keys are spread over nodes: {keys}"
    found = keys[holding[0]]
    assert len(found) == 3 + 8
    slots = {cluster.cli(holding[0], "cluster", "keyslot", key).strip() for key in found}
    assert len(slots) == 1


async def test_changes_are_heard_through_another_node_when_the_listening_one_goes_away(
    cluster: RedisCluster, pair: tuple[RedisPolicyStore, RedisPolicyStore]
) -> None:
    a, b = pair
    heard: asyncio.Queue[str | None] = asyncio.Queue()

    async def on_change(model: str | None) -> None:
        await heard.put(model)

    await b.start(on_change)
    first = b.listening
    assert first is not None
    node = cluster.ports.index(int(first.rsplit(":", 1)[1]))
    cluster.stop(node)
    try:
        deadline = time.monotonic() + 3
        while b.listening in (None, first):
            assert time.monotonic() < deadline, "still not listening through another node"
            await asyncio.sleep(0.02)
        # Changes may have gone by unheard meanwhile: the store says any policy may have changed.
        assert await asyncio.wait_for(heard.get(), 1.0) is None
    finally:
        cluster.start(node)
    cluster.wait_ok()
    await a.update("fraud", bump)
    heard_at = time.monotonic()
    while (model := await asyncio.wait_for(heard.get(), 1.0)) is None:
        pass  # a resync that was already due
    assert model == "fraud"
    assert time.monotonic() - heard_at < 1.0
    assert b.listening != first
    assert await b.read("fraud") == {"revision": 1}
