"""Where a model's audit records live in Redis: the URL forms, the stream keys, the shards.

`redis://host:port/db` (also `rediss://`, `unix://`) is one server: one stream per model,
`audit:<model>`, unless `?shards=N` splits it as on a cluster.

`redis+cluster://host:port/0` (`rediss+cluster://` for TLS) is any one node of a Redis
Cluster; the client discovers the others, and a cluster has only db 0. One stream lives in
one hash slot, hence on one node, so there a model's records are sharded over N streams
(`?shards=N`, default 8), written concurrently and merged by time on read.

Shard i of N is `audit:{<model>:<i>:<salt>}`. The hash tag decides the slot, and the salt is
the smallest number that puts the slot in the i-th N-th of the 16384 slots, so the shards sit
on evenly spaced slots. A cluster gives each master a contiguous slot range (`redis-cli
--cluster create` splits them evenly), so every master whose range spans 16384/N slots or
more holds at least one shard of every model: with 8 shards on 3 masters, 2 or 3 each. A
record's shard is crc32(request id) mod N: an even spread, and a spilled record goes back to
the shard it was meant for.

Retention rides along in the query string too: `?maxlen=100000` (per stream; default
1,000,000, 0 for none) or `?minid_age_s=86400`; and `?index_ttl_s=` how long a prediction can
be found by its request id for label feedback (service.audit.index). The id index is off by
default (0): it costs one key per prediction for that long (at 1,000 predictions a second and
two days, 173 million keys), so it is asked for where labels come by request id.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from feature_store.redis_cluster_store import SCHEMES as CLUSTER_SCHEMES
from feature_store.redis_cluster_store import client_url

# The field of a stream entry that holds the encoded record.
RECORD_FIELD = "record"
DEFAULT_MAXLEN = 1_000_000
DEFAULT_INDEX_TTL_S = 0
DEFAULT_CLUSTER_SHARDS = 8
MAX_SHARDS = 1024

N = TypeVar("N", int, float)


@dataclass(frozen=True, slots=True)
class Target:
    """An audit URL taken apart: what redis-py connects to, and what mlgate reads itself."""

    url: str  # without the `+cluster` and without mlgate's own query parameters
    cluster: bool
    shards: int | None  # None: the one stream `audit:<model>`
    maxlen: int | None
    minid_age_s: float | None
    index_ttl_s: int = DEFAULT_INDEX_TTL_S

    def keys(self, model: str) -> tuple[str, ...]:
        """Every stream that holds the model's records."""
        return (stream_key(model),) if self.shards is None else shard_keys(model, self.shards)

    def key_for(self, model: str, request_id: str) -> str:
        if self.shards is None:
            return stream_key(model)
        return shard_keys(model, self.shards)[zlib.crc32(request_id.encode()) % self.shards]


def parse(url: str) -> Target:
    """The target of a `redis://`, `rediss://`, `unix://` or `redis+cluster://` audit URL."""
    cluster = urlsplit(url).scheme in CLUSTER_SCHEMES
    parts = urlsplit(client_url(url) if cluster else url)
    maxlen: int | None = DEFAULT_MAXLEN
    minid_age_s: float | None = None
    index_ttl_s = DEFAULT_INDEX_TTL_S
    shards: int | None = DEFAULT_CLUSTER_SHARDS if cluster else None
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query):
        if key == "maxlen":
            maxlen = _number(int, url, key, value) or None
        elif key == "minid_age_s":
            minid_age_s = _number(float, url, key, value)
        elif key == "index_ttl_s":
            index_ttl_s = _number(int, url, key, value)
            if index_ttl_s < 0:
                raise ValueError(f"audit URL {url!r}: index_ttl_s must be 0 or more")
        elif key == "shards":
            shards = _number(int, url, key, value)
            if not 1 <= shards <= MAX_SHARDS:
                raise ValueError(f"audit URL {url!r}: shards must be 1 to {MAX_SHARDS}")
        else:
            kept.append((key, value))
    return Target(
        url=urlunsplit(parts._replace(query=urlencode(kept))),
        cluster=cluster,
        shards=shards,
        maxlen=maxlen,
        minid_age_s=minid_age_s,
        index_ttl_s=index_ttl_s,
    )


def _number(kind: Callable[[str], N], url: str, key: str, value: str) -> N:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"audit URL {url!r}: {key}: not a number: {value!r}") from None


def stream_key(model: str) -> str:
    """The one stream of an unsharded model."""
    return f"audit:{model}"


@cache
def shard_keys(model: str, shards: int) -> tuple[str, ...]:
    """The model's N shard streams, on evenly spaced slots (see the module docstring)."""
    return tuple(_shard_key(model, i, shards) for i in range(shards))


def _shard_key(model: str, shard: int, shards: int) -> str:
    span = REDIS_CLUSTER_HASH_SLOTS / shards
    salt = 0
    # About N tries: a slot lands in a given N-th of them with probability 1/N.
    while True:
        key = f"audit:{{{model}:{shard}:{salt}}}"
        if int(key_slot(key.encode()) // span) == shard:
            return key
        salt += 1
