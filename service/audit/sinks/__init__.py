"""Audit sinks, chosen by URL: `file://PATH`, `redis://host:port/db`,
`redis+cluster://host:port/0` or `none` (the Redis forms: service.audit.streams)."""

from __future__ import annotations

from pathlib import Path

from service.audit.sinks.base import Sink
from service.audit.sinks.file import FileSink
from service.audit.sinks.redis_cluster import RedisClusterStreamSink
from service.audit.sinks.redis_stream import RedisStreamSink
from service.audit.streams import parse

__all__ = [
    "DEFAULT_AUDIT_URL",
    "FileSink",
    "RedisClusterStreamSink",
    "RedisStreamSink",
    "Sink",
    "check_url",
    "open_sink",
]

DEFAULT_AUDIT_URL = "file://.mlgate/audit.log"


def open_sink(url: str) -> Sink | None:
    """The sink for `url`; None for `none`. Retention and shards ride in the query string:
    `redis://host:6379/0?maxlen=100000`, `redis+cluster://host:7000/0?shards=16&minid_age_s=86400`."""
    kind = sink_kind(url)
    if kind == "file":
        return FileSink(Path(url.removeprefix("file://")))
    if kind == "redis+cluster":
        return RedisClusterStreamSink.from_url(url)
    if kind == "redis":
        return RedisStreamSink.from_url(url)
    return None


def check_url(url: str) -> None:
    """ValueError naming what is wrong in an audit URL, found without connecting: what
    `mlgate serve` checks before it starts."""
    if sink_kind(url).startswith("redis"):
        parse(url)


def sink_kind(url: str) -> str:
    """`file`, `redis`, `redis+cluster` or `none`; ValueError for any other URL."""
    if url == "none":
        return "none"
    if url.startswith("file://"):
        return "file"
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return "redis+cluster"
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    raise ValueError(
        f"audit URL {url!r}: expected file://PATH, redis://host:port/db, "
        "redis+cluster://host:port/0 or none"
    )
