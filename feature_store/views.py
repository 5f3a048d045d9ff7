"""Feature view declarations: which features an entity has, their dtype, defaults and freshness.

Views are declared in YAML (``views: [...]``, see models/feature_views.yaml) and validated
strictly, so a typo fails at load time with the file and field named rather than at serving time.
"""

from __future__ import annotations

import zlib
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from feature_store.errors import ViewConfigError

# Names end up in Redis keys and metric labels: keep them to identifier characters so a key
# can always be split back into its parts and no name can contain the hash-tag braces.
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    default: float = 0.0


class FeatureView(BaseModel):
    """A group of features of one entity, stored and read as one packed row.

    One dtype per view keeps decoding to a single ``np.frombuffer``; mixed types are two views.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    entity: str = Field(pattern=_NAME)
    dtype: Literal["float32", "int64"] = "float32"
    features: list[FeatureSpec] = Field(min_length=1, max_length=65535)
    ttl_s: float | None = Field(default=None, gt=0)
    on_missing: Literal["default", "error"] = "default"
    on_stale: Literal["serve", "default"] = "serve"

    @field_validator("features")
    @classmethod
    def _unique_feature_names(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        counts = Counter(f.name for f in features)
        dups = sorted(name for name, n in counts.items() if n > 1)
        if dups:
            raise ValueError(f"duplicate feature names: {', '.join(dups)}")
        return features

    @model_validator(mode="after")
    def _int_defaults_are_integral(self) -> FeatureView:
        if self.dtype == "int64":
            bad = [f.name for f in self.features if not float(f.default).is_integer()]
            if bad:
                raise ValueError(f"int64 view needs integral defaults: {', '.join(bad)}")
        return self

    @cached_property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype).newbyteorder("<")

    @cached_property
    def defaults(self) -> npt.NDArray[Any]:
        values = np.array([f.default for f in self.features], dtype=self.np_dtype)
        # Shared by every lookup that falls back to defaults: nobody may change it in place.
        values.setflags(write=False)
        return values

    @cached_property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @cached_property
    def schema_hash(self) -> int:
        """crc32 of what fixes the stored layout; defaults and freshness policy are left out."""
        text = "\x1f".join([self.name, self.dtype, *self.feature_names])
        return zlib.crc32(text.encode())

    @cached_property
    def width(self) -> int:
        return len(self.features)


class _ViewsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    views: list[FeatureView]


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _format_msg(msg: str) -> str:
    # pydantic prefixes errors raised by our validators; the field path already says enough.
    return msg.removeprefix("Value error, ")


def load_views(path: Path) -> dict[str, FeatureView]:
    """Read ``views: [...]`` from a YAML file, keyed by view name, in file order."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ViewConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ViewConfigError(f"{path}: invalid YAML: {exc}") from exc
    try:
        parsed = _ViewsFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_format_loc(err['loc'])}: {_format_msg(err['msg'])}" for err in exc.errors()
        )
        raise ViewConfigError(f"{path}: {problems}") from None
    views: dict[str, FeatureView] = {}
    for i, view in enumerate(parsed.views):
        if view.name in views:
            raise ViewConfigError(f"{path}: views[{i}].name: duplicate view name {view.name!r}")
        views[view.name] = view
    return views


def declared_views(path: Path) -> dict[str, FeatureView]:
    """The views a gateway serves with: those of `path`, or none when there is no such file (a
    repository whose models read no features). `serve` and `models check` both take these, so
    a check passes exactly what serving accepts."""
    return load_views(path) if path.exists() else {}
