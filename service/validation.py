"""One way to say what pydantic refused in a document: a request body, a config file, settings.

A misspelt key is named as unknown before the field it was meant to be is named as missing, so
`{"canary": {"wieght": 0.5}}` reads "canary.wieght: unknown field; canary.weight: Field required".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pydantic_core import ErrorDetails


class Refusal(Protocol):
    """pydantic's ValidationError, or FastAPI's RequestValidationError."""

    def errors(self) -> Sequence[Any]: ...


def location(loc: Sequence[int | str]) -> str:
    """Where an error is, as config files name fields: `inputs[0].dims`."""
    where = ""
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
        else:
            where += f".{part}" if where else part
    return where


def message(error: ErrorDetails) -> str:
    """What is wrong: "unknown field", a validator's own words, or pydantic's."""
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    return error["msg"]


def problems(exc: Refusal, within: Sequence[int | str] = ()) -> list[str]:
    """One "where: what" line per error, unknown fields first; `within` prefixes every where."""
    errors = sorted(exc.errors(), key=lambda err: err["type"] != "extra_forbidden")
    lines = []
    for err in errors:
        where = location((*within, *err["loc"]))
        what = message(err)
        lines.append(f"{where}: {what}" if where else what)
    return lines


def describe(exc: Refusal, within: Sequence[int | str] = ()) -> str:
    """Every problem on one line."""
    return "; ".join(problems(exc, within))
