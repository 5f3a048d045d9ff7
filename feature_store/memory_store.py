"""The embedded store: packed rows in a dict, for tests, demos and single-process serving."""

from __future__ import annotations

from typing import ClassVar

from feature_store.store import OnlineStore


class MemoryStore(OnlineStore):
    """Keeps the same keys and packed rows as Redis, so every read semantic is identical."""

    kind: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self._rows: dict[str, bytes] = {}

    async def _fetch(self, keys: list[str]) -> list[bytes | None]:
        return [self._rows.get(key) for key in keys]

    async def _store(self, items: list[tuple[str, bytes]]) -> None:
        self._rows.update(items)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
