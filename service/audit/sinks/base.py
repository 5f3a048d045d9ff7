"""What the audit queue needs of a sink."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.audit.record import EncodedRecord


class Sink(Protocol):
    async def write(self, batch: Sequence[EncodedRecord]) -> None:
        """Store the whole batch, or raise; a raise sends the whole batch to the spill."""

    async def close(self) -> None: ...
