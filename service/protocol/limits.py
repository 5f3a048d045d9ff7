"""What every front refuses before any work is done: bad request ids, numeric headers that are
not plain numbers, and requests past the configured sizes.

A request id goes back out in a response header (`x-request-id`) and into the audit log, so
only ids that are safe in both pass: a bounded string of letters, digits and `._:-`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from service.protocol.errors import InvalidInput, PayloadTooLarge
from service.settings import Settings

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]*")
# Python's str.isdigit() and int() take non-ASCII digits ("²", "٣"); the wire takes only ASCII.
# Eighteen digits are past any byte count or timeout, and below int64 and int()'s digit limit.
_COUNT = re.compile(r"[0-9]{1,18}")
_MILLISECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")


@dataclass(frozen=True, slots=True)
class Limits:
    """The sizes a request may have; anything larger is refused before the store is read."""

    # Named as the settings that configure them.
    max_request_id_length: int
    max_entities: int
    max_tensor_elements: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @classmethod
    def defaults(cls) -> Limits:
        return cls(**{f.name: Settings.model_fields[f.name].default for f in fields(cls)})

    def request_id(self, value: object, field: str) -> str:
        """`value` as a request id, or InvalidInput naming `field`; "" (or None) means none."""
        if value is None:
            return ""
        if not isinstance(value, str):
            raise InvalidInput(f"{field} must be a string")
        if len(value) > self.max_request_id_length:
            raise InvalidInput(
                f"{field} is {len(value)} characters long; the limit is "
                f"{self.max_request_id_length}"
            )
        if not _REQUEST_ID.fullmatch(value):
            raise InvalidInput(f"{field} may hold only ASCII letters, digits and . _ : -")
        return value

    def entities(self, count: int) -> None:
        if count > self.max_entities:
            raise PayloadTooLarge(
                f"{count} entities in one request; the limit is {self.max_entities}"
            )

    def tensor_elements(self, count: int) -> None:
        if count > self.max_tensor_elements:
            raise PayloadTooLarge(
                f"{count} tensor elements in one request; the limit is {self.max_tensor_elements}"
            )


# For callers that configure nothing (tests, tools): the settings' defaults.
DEFAULT_LIMITS = Limits.defaults()


def header_count(name: str, raw: str) -> int:
    """A header that holds a byte count: ASCII digits only, else InvalidInput naming it."""
    if not _COUNT.fullmatch(raw):
        raise InvalidInput(f"{name} must be a byte count (ASCII digits)")
    return int(raw)


def header_milliseconds(name: str, raw: str) -> float:
    """A header that holds a positive duration in milliseconds, e.g. `250` or `0.5`."""
    ms = float(raw) if _MILLISECONDS.fullmatch(raw) else 0.0
    if not ms > 0:
        raise InvalidInput(f"{name} must be a positive number of milliseconds")
    return ms
