"""The Redis store: one ``MGET`` per read, one pipeline of ``MSET``s per write."""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import ClassVar, TypeVar, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from feature_store.errors import FeatureStoreError, StoreUnavailable
from feature_store.store import OnlineStore, display_url

T = TypeVar("T")

# Keys per MSET inside a write's pipeline. redis-py parses each reply with Python overhead, so
# per-key SETs cap bulk loads near 40k rows/s; one MSET for a whole batch would block the
# server (and every feature read) for milliseconds. A few hundred keys keeps both small.
MSET_KEYS = 500


class RedisStore(OnlineStore):
    """Packed rows in a single Redis server (``redis://`` or, with TLS, ``rediss://``).

    Keys carry no Redis expiry: freshness is enforced at read time from the event time in each
    row's header against the view's ``ttl_s``, so a changed ttl applies at once and a stale row
    is reported as stale (or defaulted) rather than silently vanishing into "missing".

    Every command waits at most `socket_timeout` seconds. A broken pooled connection (after a
    server restart, say) is retried once at once on a fresh one; a timeout is not retried, so a
    slow or down server costs a request at most about `socket_timeout`.
    """

    kind: ClassVar[str] = "redis"

    def __init__(self, url: str, *, socket_timeout: float = 1.0, max_connections: int = 64) -> None:
        self.url = display_url(url)
        self._pool: ConnectionPool = ConnectionPool.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._client = Redis(connection_pool=self._pool)

    async def _call(self, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(
                f"feature store {self.url} unavailable: {failure_reason(exc)}"
            ) from exc
        except RedisError as exc:
            raise FeatureStoreError(f"feature store {self.url}: {exc}") from exc

    async def _fetch(self, keys: list[str]) -> list[bytes | None]:
        self._round_trip()
        values = await self._call(self._client.mget(keys))
        # decode_responses is off, so values come back as bytes, never str.
        return cast(list[bytes | None], values)

    async def _store(self, items: list[tuple[str, bytes]]) -> None:
        self._round_trip()
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(items), MSET_KEYS):
            args = [part for item in items[start : start + MSET_KEYS] for part in item]
            pipe.execute_command("MSET", *args)
        await self._call(pipe.execute())

    async def ping(self) -> None:
        await self._call(self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()
        await self._pool.aclose()


def failure_reason(exc: Exception) -> str:
    """The OS-level reason (``Connection refused``) when there is one, not redis-py's prose."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno)
    if isinstance(exc, RedisTimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
