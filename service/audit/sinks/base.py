"""What the audit queue needs of a sink."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.audit.index import PredictionIndex
from service.audit.record import EncodedRecord


class Sink(Protocol):
    @property
    def index(self) -> PredictionIndex:
        """Where label feedback finds a written prediction again."""

    def lane(self, e: EncodedRecord) -> str:
        """The lane of a record: a sink keeps each lane's records in order, and fails a lane
        as a whole. One lane (\"\") for a file or one server; a stream each on a cluster."""

    async def write(self, batch: Sequence[EncodedRecord]) -> list[EncodedRecord]:
        """Store the batch; the records of the lanes that failed, or [] when all are stored.
        A raise fails the whole batch. Either way, what failed goes to the spill."""

    async def close(self) -> None: ...
