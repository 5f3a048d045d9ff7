"""The routing policy: the `routing` section of a model's config.yaml, and the policy every
process shares (with its history, last rollback and versions to keep loaded).

The `routing` section of a model's config.yaml (and of `mlgate serve --routing FILE`):

    routing:
      stable: "2"                                  # default: default_version
      canary: {version: "1", weight: 0.1}
      shadow: [{version: "3", sample_rate: 1.0}]   # mirrored after the primary answer
      arms: {blue: {version: "1", weight: 0.2}}    # named A/B arms: weights over versions
      agreement_tolerance: 0.01                    # |primary - shadow| above this disagrees
      rollback: {window_s: 60, min_requests: 100, max_error_rate: 0.05, max_flag_rate: 0.1,
                 max_p99_ratio: 2.0, max_disagreement: 0.2,
                 max_quality_drop: 0.05, min_labels: 100}  # quality: needs a quality section
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.validation import describe
from service.versions import VersionName

# Route names: the slot a request counts towards is `<route>/<version>`.
PRIMARY = "primary"
CANARY = "canary"
SHADOW = "shadow"
OVERRIDE = "override"
_RESERVED_ROUTES = frozenset({PRIMARY, CANARY, SHADOW, OVERRIDE})
_ARM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# Changes kept in a policy's history (the admin API shows them).
HISTORY = 50


def route_name(text: str) -> str:
    """A route a record can carry (primary, canary, shadow, override or an arm's name), as a
    command line names one; ValueError otherwise."""
    if text in _RESERVED_ROUTES or _ARM_NAME.match(text):
        return text
    raise ValueError(
        f"{text!r} is no route: {', '.join(sorted(_RESERVED_ROUTES))} or an A/B arm's name "
        "(lower-case letters, digits and _)"
    )


class CanaryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    version: VersionName
    weight: float = Field(ge=0.0, le=1.0)


class ShadowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    version: VersionName
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)


class ArmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    version: VersionName
    weight: float = Field(gt=0.0, le=1.0)


class RollbackConfig(BaseModel):
    """Thresholds over a sliding window of every process's traffic; unset ones are not checked."""

    model_config = ConfigDict(extra="forbid")

    window_s: float = Field(default=60.0, ge=1.0, le=86_400.0)
    # Below this many canary requests (or shadow copies) in the window nothing is judged.
    min_requests: int = Field(default=100, ge=1)
    max_error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    max_flag_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    max_p99_ratio: float | None = Field(default=None, gt=0.0)
    max_disagreement: float | None = Field(default=None, ge=0.0, le=1.0)
    # The canary's realised quality (config.yaml's quality section) may be worse than the
    # stable version's by at most this much, once each has min_labels labels joined in the
    # window. Labels come late: the window counts them when they arrive.
    max_quality_drop: float | None = Field(default=None, gt=0.0)
    min_labels: int = Field(default=100, ge=1)


class RoutingConfig(BaseModel):
    """The `routing` section of config.yaml, and the policy the admin API changes."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    stable: VersionName | None = None
    canary: CanaryConfig | None = None
    shadow: list[ShadowConfig] = Field(default_factory=list)
    arms: dict[str, ArmConfig] = Field(default_factory=dict)
    agreement_tolerance: float = Field(default=0.01, ge=0.0)
    rollback: RollbackConfig | None = None

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, value: dict[str, ArmConfig]) -> dict[str, ArmConfig]:
        for name in value:
            if not _ARM_NAME.match(name) or name in _RESERVED_ROUTES:
                raise ValueError(
                    f"arm name {name!r}: lower-case letters, digits and _, at most 32, and not "
                    f"one of {', '.join(sorted(_RESERVED_ROUTES))}"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        canary = self.canary.weight if self.canary is not None else 0.0
        total = canary + sum(arm.weight for arm in self.arms.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"canary and arm weights add up to {total:g}, more than 1")
        if self.canary is not None and self.canary.version == self.stable:
            raise ValueError(f"canary.version '{self.stable}' is the stable version")
        shadows = [s.version for s in self.shadow]
        if len(set(shadows)) != len(shadows):
            raise ValueError("shadow lists a version twice")
        if self.stable is not None and self.stable in shadows:
            raise ValueError(f"shadow version '{self.stable}' is the stable version")
        return self

    def versions(self) -> set[str]:
        """Every version the policy sends traffic to."""
        named = {self.stable} if self.stable is not None else set()
        if self.canary is not None:
            named.add(self.canary.version)
        named.update(s.version for s in self.shadow)
        named.update(a.version for a in self.arms.values())
        return named


class Change(BaseModel):
    """One entry of a policy's history: who changed what, and the policy before and after."""

    at_ms: int
    who: str
    what: str
    detail: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class Rollback(BaseModel):
    """Why the canary was last taken out of traffic automatically."""

    at_ms: int
    version: str
    reason: str  # error_rate | flag_rate | p99_ratio | disagreement | quality
    detail: str


class ModelPolicy(BaseModel):
    """A model's routing policy as every process shares it (the policy store holds it as JSON).

    `versions` are the versions to keep loaded, each with a reload generation: a process that
    sees a generation above the one it loaded reloads that version.
    """

    model_config = ConfigDict(extra="forbid")

    routing: RoutingConfig
    revision: int = 0
    # Digest of the config.yaml section this policy grew from: a changed config.yaml wins over
    # the stored policy, an unchanged one (a restarted worker) adopts it.
    source: str
    # When the canary last entered traffic; the rollout windows count only its traffic since.
    canary_since_ms: int = 0
    rollback: Rollback | None = None
    versions: dict[str, int] = Field(default_factory=dict)
    history: list[Change] = Field(default_factory=list)

    @property
    def stable(self) -> str:
        assert self.routing.stable is not None, "a stored policy always names its stable version"
        return self.routing.stable

    def canary_slot(self) -> str | None:
        canary = self.routing.canary
        return None if canary is None else f"{CANARY}/{canary.version}/{self.canary_since_ms}"

    def primary_slot(self) -> str:
        return f"{PRIMARY}/{self.stable}"


def read_routing_file(path: Path) -> dict[str, RoutingConfig]:
    """`mlgate serve --routing FILE`: {model: routing section}, in place of config.yaml's."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of model name -> routing section")
    sections = {}
    for model, section in data.items():
        try:
            sections[str(model)] = RoutingConfig.model_validate(section)
        except ValidationError as exc:
            # The file is the routing sections themselves, as config.yaml's `routing:` holds one.
            hint = " (the file maps model names to routing sections: no top-level `routing:`)"
            raise ValueError(
                f"{path}: {describe(exc, within=(str(model),))}"
                + (hint if model == "routing" else "")
            ) from None
    return sections


def source_digest(routing: RoutingConfig) -> str:
    return hashlib.sha256(routing.model_dump_json().encode()).hexdigest()[:16]


def initial_policy(
    routing: RoutingConfig | None, stable: str, versions: Iterable[str]
) -> ModelPolicy:
    """The policy config.yaml declares, before any runtime change."""
    config = (routing or RoutingConfig()).model_copy(update={"stable": stable})
    return ModelPolicy(
        routing=config,
        source=source_digest(config),
        canary_since_ms=now_ms(),
        versions=dict.fromkeys(sorted(versions, key=int), 0),
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000
