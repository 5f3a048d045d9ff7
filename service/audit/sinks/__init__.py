"""Audit sinks, chosen by URL: `file://PATH`, `redis://host:port/db`,
`redis+cluster://host:port/0` or `none` (the Redis forms: service.audit.streams)."""

from __future__ import annotations

from pathlib import Path

from service.audit.sinks.base import Sink
from service.audit.sinks.file import FileSink
from service.audit.sinks.redis_cluster import RedisClusterStreamSink
from service.audit.sinks.redis_stream import RedisStreamSink

__all__ = [
    "DEFAULT_AUDIT_URL",
    "FileSink",
    "RedisClusterStreamSink",
    "RedisStreamSink",
    "Sink",
    "open_sink",
]

DEFAULT_AUDIT_URL = "file://.mlgate/audit.log"


def open_sink(url: str) -> Sink | None:
    """The sink for `url`; None for `none`. Retention and shards ride in the query string:
    `redis://host:6379/0?maxlen=100000`, `redis+cluster://host:7000/0?shards=16&minid_age_s=86400`."""
    if url == "none":
        return None
    if url.startswith("file://"):
        return FileSink(Path(url.removeprefix("file://")))
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return RedisClusterStreamSink.from_url(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStreamSink.from_url(url)
    raise ValueError(
        f"audit URL {url!r}: expected file://PATH, redis://host:port/db, "
        "redis+cluster://host:port/0 or none"
    )
