"""Audit sinks, chosen by URL: `file://PATH`, `redis://host:port/db`, or `none`."""

from __future__ import annotations

from pathlib import Path

from service.audit.sinks.base import Sink
from service.audit.sinks.file import FileSink
from service.audit.sinks.redis_stream import RedisStreamSink

__all__ = ["DEFAULT_AUDIT_URL", "FileSink", "RedisStreamSink", "Sink", "open_sink"]

DEFAULT_AUDIT_URL = "file://.mlgate/audit.log"


def open_sink(url: str) -> Sink | None:
    """The sink for `url`; None for `none`. Redis retention rides in the query string:
    `redis://host:6379/0?maxlen=100000` or `?minid_age_s=86400`."""
    if url == "none":
        return None
    if url.startswith("file://"):
        return FileSink(Path(url.removeprefix("file://")))
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStreamSink.from_url(url)
    raise ValueError(f"audit URL {url!r}: expected file://PATH, redis://host:port/db or none")
