"""Policy stores shared by processes: atomic updates, change notices, summed counts.

Two store objects on one file or one Redis stand for two gateway processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.routing.policy_store import (
    Doc,
    FilePolicyStore,
    MemoryPolicyStore,
    PolicyStore,
    RedisPolicyStore,
    open_policy_store,
)


@pytest.fixture(params=["file", "redis", "cluster"])
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[PolicyStore, PolicyStore]]:
    if request.param == "file":
        path = tmp_path / "policy.json"
        stores: tuple[PolicyStore, PolicyStore] = (
            FilePolicyStore(path, writer="a"),
            FilePolicyStore(path, writer="b"),
        )
    else:
        fixture = "redis_url" if request.param == "redis" else "cluster"
        value = request.getfixturevalue(fixture)
        url = value if isinstance(value, str) else value.url
        stores = (RedisPolicyStore(url), RedisPolicyStore(url))
    yield stores
    for store in stores:
        await store.close()


def bump(doc: Doc | None) -> Doc:
    return {"revision": (doc or {}).get("revision", 0) + 1}


async def test_concurrent_updates_from_two_processes_lose_nothing(
    pair: tuple[PolicyStore, PolicyStore],
) -> None:
    a, b = pair

    async def bumps(store: PolicyStore) -> None:
        for _ in range(25):
            await store.update("fraud", bump)

    await asyncio.gather(bumps(a), bumps(b), bumps(a), bumps(b))
    assert await a.read("fraud") == await b.read("fraud") == {"revision": 100}


async def test_a_change_refused_or_declined_leaves_the_policy(
    pair: tuple[PolicyStore, PolicyStore],
) -> None:
    a, _ = pair
    await a.update("fraud", bump)

    def refuse(doc: Doc | None) -> Doc | None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await a.update("fraud", refuse)
    assert await a.update("fraud", lambda doc: None) == {"revision": 1}
    assert await a.read("other") is None


async def test_the_other_process_hears_of_a_change_within_a_second(
    pair: tuple[PolicyStore, PolicyStore],
) -> None:
    a, b = pair
    heard: asyncio.Queue[str | None] = asyncio.Queue()

    async def on_change(model: str | None) -> None:
        await heard.put(model)

    await b.start(on_change)
    await a.start(on_change)
    await a.update("fraud", bump)
    models = {await asyncio.wait_for(heard.get(), 1.0), await asyncio.wait_for(heard.get(), 1.0)}
    assert models == {"fraud"}  # both processes hear it, the writer included
    assert await b.read("fraud") == {"revision": 1}


async def test_counts_are_summed_over_processes_and_keys(
    pair: tuple[PolicyStore, PolicyStore],
) -> None:
    a, b = pair
    await a.add_counts({"w|1": {"x:n": 3, "x:diff": 0.25}, "w|2": {"x:n": 1}}, ttl_s=30)
    await b.add_counts({"w|1": {"x:n": 2, "y:n": 5}}, ttl_s=30)
    await a.add_counts({"w|2": {"x:n": 4}}, ttl_s=30)
    assert await b.read_counts(["w|1", "w|2", "w|3"]) == {"x:n": 10, "x:diff": 0.25, "y:n": 5}
    assert await a.read_counts(["w|2"]) == {"x:n": 5}


async def test_counts_expire_with_their_window(tmp_path: Path) -> None:
    memory = MemoryPolicyStore()
    file = FilePolicyStore(tmp_path / "policy.json")
    for store in (memory, file):
        await store.add_counts({"w|1": {"n": 1}}, ttl_s=0.05)
        await asyncio.sleep(0.1)
        await store.add_counts({"w|2": {"n": 1}}, ttl_s=30)
        assert await store.read_counts(["w|1", "w|2"]) == {"n": 1}


def test_store_urls() -> None:
    assert isinstance(open_policy_store("memory://"), MemoryPolicyStore)
    file = open_policy_store("file:///tmp/x/policy.json")
    assert isinstance(file, FilePolicyStore) and file.path == Path("/tmp/x/policy.json")
    with pytest.raises(ValueError, match="expected memory://"):
        open_policy_store("etcd://host")
