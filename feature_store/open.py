"""The store a URL names: the one place that knows every kind of store."""

from __future__ import annotations

from urllib.parse import urlsplit

from feature_store.memory_store import MemoryStore
from feature_store.redis_cluster_store import RedisClusterStore
from feature_store.redis_store import RedisStore
from feature_store.store import OnlineStore, display_url

SCHEMES = ("memory://", "redis://", "rediss://", "redis+cluster://", "rediss+cluster://")


def open_store(url: str) -> OnlineStore:
    """The store a URL names: ``memory://``, ``redis://host:port/db`` or ``rediss://...`` (one
    server), ``redis+cluster://host:port/0`` or ``rediss+cluster://...`` (a Redis Cluster, from
    any one of its nodes)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss"):
        return RedisStore(url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        return RedisClusterStore(url)
    raise ValueError(
        f"unsupported feature store URL {display_url(url)!r}: use one of {', '.join(SCHEMES)}"
    )
