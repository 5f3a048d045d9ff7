"""Where every gateway process finds the routing policies and the rollout windows' counts.

    memory://            one process: the policies and counts live in it
    file:///path.json    processes on one host: a JSON file under a lock, polled for changes;
                         each process writes its counts beside it (<path>.windows/<pid>.json)
    redis://host:port/db Redis: a key per policy, a pub/sub message per change, counts in
                         hashes that expire with their window
    redis+cluster://host:port/0
                         the same on a Redis Cluster (any one node; the client finds the others)

A policy is a JSON object the store does not interpret; `update` replaces one atomically
(read, change, write under a lock or WATCH), so two processes changing the same policy at once
never lose a change. Counters are per window bucket, `{key: {field: value}}`, summed across
processes on read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, WatchError

from feature_store.redis_cluster_store import client_url
from service.protocol.errors import Unavailable

log = logging.getLogger(__name__)

Doc = dict[str, Any]
# Called with a model whose policy changed, or None when any may have (after a reconnect).
OnChange = Callable[[str | None], Awaitable[None]]
Change = Callable[[Doc | None], Doc | None]

FILE_POLL_S = 0.1
# Redis: re-read every policy this often even without a message, in case one was missed.
REDIS_RESYNC_S = 5.0
# Redis: after losing the change channel, wait this long before subscribing again.
REDIS_RESUBSCRIBE_S = 0.2
# One hash tag on every key: a Redis Cluster keeps them all in one slot, so WATCH/MULTI/EXEC on
# a policy and the reads of a window's counts stay on one node.
_REDIS_PREFIX = "{mlgate:routing}:"
# A channel has no slot: a PUBLISH on a cluster reaches the subscribers of every node.
_REDIS_CHANNEL = "mlgate:routing:changes"
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_REDIS_TIMEOUTS: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}


class PolicyStoreUnavailable(Unavailable):
    """The shared store cannot be reached: a change cannot be made now (503)."""


class PolicyStore(ABC):
    kind: str

    @abstractmethod
    async def start(self, on_change: OnChange) -> None:
        """Begin telling `on_change` about changes made by any process."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def read(self, model: str) -> Doc | None: ...

    @abstractmethod
    async def update(self, model: str, change: Change) -> Doc | None:
        """Store change(current) atomically and return it; None from `change` keeps the current
        policy, which is returned. `change` may raise, leaving the store as it was."""

    @abstractmethod
    async def add_counts(self, counts: Mapping[str, Mapping[str, float]], ttl_s: float) -> None:
        """Add this process's counts; each key is forgotten `ttl_s` after its last addition."""

    @abstractmethod
    async def read_counts(self, keys: list[str]) -> dict[str, float]:
        """The fields of `keys`, summed over keys and processes."""


def open_policy_store(url: str) -> PolicyStore:
    if url.startswith("memory://"):
        return MemoryPolicyStore()
    if url.startswith("file://"):
        return FilePolicyStore(Path(url.removeprefix("file://")))
    if url.startswith(("redis://", "rediss://", *_CLUSTER_SCHEMES)):
        return RedisPolicyStore(url)
    raise ValueError(
        f"{url!r}: expected memory://, file:///path, redis://host:port/db "
        "or redis+cluster://host:port/0"
    )


class _Counts:
    """One process's counters: {key: (expires at, {field: value})}."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, dict[str, float]]] = {}

    def add(self, counts: Mapping[str, Mapping[str, float]], ttl_s: float) -> None:
        now = time.time()
        self.entries = {k: e for k, e in self.entries.items() if e[0] > now}
        for key, fields in counts.items():
            _, held = self.entries.get(key, (0.0, {}))
            for name, value in fields.items():
                held[name] = held.get(name, 0.0) + value
            self.entries[key] = (now + ttl_s, held)


def _sum_into(total: dict[str, float], fields: Mapping[str, float]) -> None:
    for name, value in fields.items():
        total[name] = total.get(name, 0.0) + value


class MemoryPolicyStore(PolicyStore):
    kind = "memory"

    def __init__(self) -> None:
        self._docs: dict[str, Doc] = {}
        self._counts = _Counts()

    async def start(self, on_change: OnChange) -> None:
        pass

    async def close(self) -> None:
        pass

    async def read(self, model: str) -> Doc | None:
        return self._docs.get(model)

    async def update(self, model: str, change: Change) -> Doc | None:
        new = change(self._docs.get(model))
        if new is not None:
            self._docs[model] = new
        return self._docs.get(model)

    async def add_counts(self, counts: Mapping[str, Mapping[str, float]], ttl_s: float) -> None:
        self._counts.add(counts, ttl_s)

    async def read_counts(self, keys: list[str]) -> dict[str, float]:
        total: dict[str, float] = {}
        now = time.time()
        for key in keys:
            entry = self._counts.entries.get(key)
            if entry is not None and entry[0] > now:
                _sum_into(total, entry[1])
        return total


class FilePolicyStore(PolicyStore):
    """A JSON file of {model: policy}; changed under an exclusive lock, replaced atomically."""

    kind = "file"

    def __init__(self, path: Path, writer: str | None = None) -> None:
        self.path = path
        self._lock = path.with_name(path.name + ".lock")
        self._counts_dir = path.with_name(path.name + ".windows")
        # Each process writes its counts to a file of its own, named by its pid by default.
        self._own_counts = self._counts_dir / f"{writer or os.getpid()}.json"
        self._counts = _Counts()
        self._seen: dict[str, Doc] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, on_change: OnChange) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._counts_dir.mkdir(exist_ok=True)
        self._seen = await asyncio.to_thread(self._read_all)
        self._watcher = asyncio.create_task(self._watch(on_change))

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _watch(self, on_change: OnChange) -> None:
        while True:
            await asyncio.sleep(FILE_POLL_S)
            try:
                stamp = _stamp(self.path)
                if stamp == self._stamp:
                    continue
                self._stamp = stamp
                docs = await asyncio.to_thread(self._read_all)
            except (OSError, ValueError) as exc:
                log.warning("policy file %s unreadable: %s", self.path, exc)
                continue
            changed = [m for m, doc in docs.items() if self._seen.get(m) != doc]
            self._seen = docs
            for model in changed:
                await on_change(model)

    def _read_all(self) -> dict[str, Doc]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        models: dict[str, Doc] = data.get("models", {})
        return models

    async def read(self, model: str) -> Doc | None:
        return (await asyncio.to_thread(self._read_all)).get(model)

    async def update(self, model: str, change: Change) -> Doc | None:
        return await asyncio.to_thread(self._update, model, change)

    def _update(self, model: str, change: Change) -> Doc | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            docs = self._read_all()
            new = change(docs.get(model))
            if new is None:
                return docs.get(model)
            docs[model] = new
            _write_atomically(self.path, {"models": docs})
            return new

    async def add_counts(self, counts: Mapping[str, Mapping[str, float]], ttl_s: float) -> None:
        self._counts.add(counts, ttl_s)
        snapshot = {key: (at, dict(fields)) for key, (at, fields) in self._counts.entries.items()}
        await asyncio.to_thread(self._write_counts, snapshot)

    def _write_counts(self, entries: dict[str, tuple[float, dict[str, float]]]) -> None:
        self._counts_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._own_counts, entries)

    async def read_counts(self, keys: list[str]) -> dict[str, float]:
        return await asyncio.to_thread(self._read_counts, keys)

    def _read_counts(self, keys: list[str]) -> dict[str, float]:
        total: dict[str, float] = {}
        now = time.time()
        for path in self._counts_dir.glob("*.json"):
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # a process gone mid-write, or its file just replaced
            for key in keys:
                entry = entries.get(key)
                if entry is not None and entry[0] > now:
                    _sum_into(total, entry[1])
        return total


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _write_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def _cluster_client(url: str) -> RedisCluster:
    """A cluster client from `redis+cluster://host:port/0` (or `rediss+cluster://`)."""
    return RedisCluster.from_url(client_url(url), **_REDIS_TIMEOUTS)


@dataclass
class _Subscription:
    """The change channel, subscribed through one server."""

    pubsub: PubSub
    node: str  # host:port
    client: Redis | None  # a client of its own, for one node of a cluster

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.pubsub.aclose()
        if self.client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.client.aclose()


class RedisPolicyStore(PolicyStore):
    """Policies at {mlgate:routing}:policy:<model>, counts in hashes
    {mlgate:routing}:counts:<key>, changes announced on mlgate:routing:changes.

    On a cluster every key is in the one slot of the hash tag; the change channel is heard
    through any one node (first the one holding the policies) and, when that node goes away,
    through the next that answers. Changes missed meanwhile are made up by a resync.
    """

    kind = "redis"

    def __init__(self, url: str) -> None:
        self._client: Redis | RedisCluster = (
            _cluster_client(url)
            if url.startswith(_CLUSTER_SCHEMES)
            else Redis.from_url(url, **_REDIS_TIMEOUTS)
        )
        self._listener: asyncio.Task[None] | None = None
        self._subscription: _Subscription | None = None

    @property
    def listening(self) -> str | None:
        """host:port of the server whose change channel this store hears now."""
        return None if self._subscription is None else self._subscription.node

    def _key(self, model: str) -> str:
        return f"{_REDIS_PREFIX}policy:{model}"

    async def start(self, on_change: OnChange) -> None:
        try:
            self._subscription = await self._subscribe()
        except (RedisError, OSError) as exc:
            log.warning("policy store: no change channel yet (%s); retrying", exc)
        self._listener = asyncio.create_task(self._listen(on_change))

    async def _subscribe(self) -> _Subscription:
        client = self._client
        if isinstance(client, Redis):
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(_REDIS_CHANNEL)
            where = client.connection_pool.connection_kwargs
            return _Subscription(pubsub, f"{where.get('host')}:{where.get('port')}", None)
        await client.initialize()
        owner = client.get_node_from_key(_REDIS_PREFIX)
        nodes = sorted(client.get_nodes(), key=lambda node: node is not owner)
        error: Exception = RedisError("the cluster knows no node")
        for node in nodes:
            pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            one = Redis.from_pool(pool)
            pubsub = one.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(_REDIS_CHANNEL)
            except (RedisError, OSError) as exc:
                error = exc
                await _Subscription(pubsub, node.name, one).close()
                continue
            return _Subscription(pubsub, node.name, one)
        raise error

    async def _listen(self, on_change: OnChange) -> None:
        resync = time.monotonic() + REDIS_RESYNC_S
        try:
            while True:
                try:
                    if self._subscription is None:
                        self._subscription = await self._subscribe()
                        log.info("policy store: hearing changes through %s", self.listening)
                    message = await self._subscription.pubsub.get_message(timeout=1.0)
                except (RedisError, OSError) as exc:
                    log.warning("policy store: lost the change channel (%s); retrying", exc)
                    if self._subscription is not None:
                        await self._subscription.close()
                        self._subscription = None
                    await asyncio.sleep(REDIS_RESUBSCRIBE_S)
                    resync = 0.0  # changes may have gone by unannounced
                    continue
                if message is not None and message["type"] == "message":
                    await on_change(message["data"].decode())
                if time.monotonic() >= resync:
                    resync = time.monotonic() + REDIS_RESYNC_S
                    await on_change(None)
        finally:
            if self._subscription is not None:
                await self._subscription.close()
                self._subscription = None

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        elif self._subscription is not None:
            await self._subscription.close()
        await self._client.aclose()

    async def read(self, model: str) -> Doc | None:
        raw = await self._client.get(self._key(model))
        return None if raw is None else dict(json.loads(raw))

    async def update(self, model: str, change: Change) -> Doc | None:
        try:
            new, changed = await self._update(model, change)
        except (RedisError, OSError) as exc:
            # The details name internal hosts: they go to the log.
            log.warning("policy store: %s", exc)
            raise PolicyStoreUnavailable("the policy store is unavailable; retry later") from None
        if not changed:
            return new
        # Announced after the transaction: a cluster's MULTI holds the commands of one slot, and
        # a channel has none.
        try:
            await self._client.publish(_REDIS_CHANNEL, model)
        except (RedisError, OSError) as exc:
            log.warning(
                "policy store: %s's policy is stored but not announced (%s); the other processes "
                "take it up at their next resync",
                model,
                exc,
            )
        return new

    async def _update(self, model: str, change: Change) -> tuple[Doc | None, bool]:
        """The document as stored now, and whether `change` changed it."""
        key = self._key(model)
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    current = None if raw is None else dict(json.loads(raw))
                    new = change(current)
                    if new is None:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return current, False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, json.dumps(new, separators=(",", ":")))
                    await pipe.execute()
                    return new, True
                except WatchError:
                    continue  # another process changed it between our read and write

    async def add_counts(self, counts: Mapping[str, Mapping[str, float]], ttl_s: float) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key, fields in counts.items():
            name = f"{_REDIS_PREFIX}counts:{key}"
            for field, value in fields.items():
                if float(value).is_integer():
                    pipe.hincrby(name, field, int(value))
                else:
                    pipe.hincrbyfloat(name, field, value)
            pipe.expire(name, math.ceil(ttl_s))
        await pipe.execute()

    async def read_counts(self, keys: list[str]) -> dict[str, float]:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(f"{_REDIS_PREFIX}counts:{key}")
        total: dict[str, float] = {}
        for fields in await pipe.execute():
            _sum_into(total, {k.decode(): float(v) for k, v in fields.items()})
        return total
