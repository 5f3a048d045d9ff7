"""Version names: a model's versions are named by digits ("1", "12"), as Triton's are.

The one check, for config files (`VersionName` in a pydantic model), admin paths and
directory scans (`is_version`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def is_version(name: str) -> bool:
    return name.isascii() and name.isdigit()


def check_version(name: str) -> str:
    """`name` itself; ValueError unless it is a version name."""
    if not is_version(name):
        raise ValueError(f"{name!r} is not a version; versions are named by digits")
    return name


VersionName = Annotated[str, AfterValidator(check_version)]
