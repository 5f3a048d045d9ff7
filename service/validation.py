"""One way to say what pydantic refused in a document: a request body, a config file, settings.

A misspelt key is named as unknown before the field it was meant to be is named as missing, so
`{"canary": {"wieght": 0.5}}` reads "canary.wieght: unknown field; canary.weight: Field required".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Refusal(Protocol):
    """pydantic's ValidationError, or FastAPI's RequestValidationError."""

    def errors(self) -> Sequence[Mapping[str, Any]]: ...


def problems(exc: Refusal) -> list[str]:
    """One "where: what" line per error, unknown fields first."""
    errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
    lines = []
    for err in errors:
        where = ".".join(str(part) for part in err["loc"])
        what = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {what}" if where else what)
    return lines


def describe(exc: Refusal) -> str:
    """Every problem on one line."""
    return "; ".join(problems(exc))
