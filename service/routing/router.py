"""The router: which version answers a request.

Assignment is sticky: a request's key (its first entity id, else its request id) hashes with
the model name to a bucket in [0, 1). The canary takes the buckets below its weight, the arms
take theirs down from 1 in name order, and the stable version the rest, so raising the canary's
weight keeps everyone already on it there, and never moves an arm's users.

An explicit version, in the URL, the `x-mlgate-version` header or the `mlgate_version`
parameter, bypasses routing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service import metrics
from service.protocol.errors import InvalidInput
from service.routing.config import CANARY, OVERRIDE, PRIMARY, ModelPolicy, RollbackConfig
from service.routing.rollout import Tally

# An explicit version, as a request header or a V2 request parameter, bypasses routing.
VERSION_HEADER = "x-mlgate-version"
VERSION_PARAMETER = "mlgate_version"


def bucket(model: str, key: str) -> float:
    """Where `key` falls in [0, 1) for `model`: uniform, stable across processes and restarts."""
    digest = hashlib.blake2b(f"{model}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class Decision:
    version: str
    route: str
    slot: str  # the rollout-window key of the route this request counts towards

    @classmethod
    def override(cls, version: str) -> Decision:
        return cls(version, OVERRIDE, f"{OVERRIDE}/{version}")


def explicit_version(
    url: str | None, header: str | None, parameters: Mapping[str, Any]
) -> str | None:
    """The version a request names, which bypasses routing: in its URL, else its header, else
    its V2 parameters."""
    if url or header:
        return url or header
    named = parameters.get(VERSION_PARAMETER)
    if named is None or named == "":
        return None
    if isinstance(named, bool) or not isinstance(named, str | int):
        raise InvalidInput(f"parameter '{VERSION_PARAMETER}' must be a version name")
    return str(named)


@dataclass(frozen=True, slots=True)
class _Table:
    """A policy compiled for choosing: intervals of [0, 1) and their decisions."""

    stable: Decision
    canary_weight: float
    canary: Decision | None
    arms: tuple[tuple[float, Decision], ...]  # (lower bound, decision), from the top down
    shadows: tuple[tuple[str, float], ...]  # (version, sample rate)
    window_s: float

    @classmethod
    def of(cls, policy: ModelPolicy) -> _Table:
        routing = policy.routing
        canary = routing.canary
        canary_slot = policy.canary_slot()
        arms = []
        top = 1.0
        for name in sorted(routing.arms):
            arm = routing.arms[name]
            top -= arm.weight
            arms.append((top, Decision(arm.version, name, f"{name}/{arm.version}")))
        return cls(
            stable=Decision(policy.stable, PRIMARY, policy.primary_slot()),
            canary_weight=canary.weight if canary is not None else 0.0,
            canary=None
            if canary is None or canary_slot is None
            else Decision(canary.version, CANARY, canary_slot),
            arms=tuple(arms),
            shadows=tuple((s.version, s.sample_rate) for s in routing.shadow),
            window_s=(routing.rollback or RollbackConfig()).window_s,
        )

    def choose(self, point: float) -> Decision:
        if self.canary is not None and point < self.canary_weight:
            return self.canary
        for lower, decision in self.arms:
            if point >= lower:
                return decision
        return self.stable


class Router:
    """The policies this process routes by, and its share of the rollout windows' counts."""

    def __init__(self) -> None:
        self._policies: dict[str, ModelPolicy] = {}
        self._tables: dict[str, _Table] = {}
        self.tally = Tally()

    def set(self, model: str, policy: ModelPolicy) -> None:
        previous = self._policies.get(model)
        self._policies[model] = policy
        self._tables[model] = _Table.of(policy)
        _show_canary_weight(model, previous, policy)

    def policy(self, model: str) -> ModelPolicy:
        return self._policies[model]

    def policies(self) -> dict[str, ModelPolicy]:
        return dict(self._policies)

    def stable(self, model: str) -> str | None:
        policy = self._policies.get(model)
        return None if policy is None else policy.stable

    def choose(self, model: str, key: str) -> Decision:
        table = self._tables[model]
        return table.choose(bucket(model, key))

    def fallback(self, model: str) -> Decision:
        """Where a request goes when its chosen version is not loaded in this process (yet)."""
        return self._tables[model].stable

    def shadows(self, model: str, served: str, draw: Callable[[], float]) -> list[str]:
        """Versions to mirror a request to: sampled, never the version that answered it."""
        table = self._tables[model]
        return [v for v, rate in table.shadows if v != served and (rate >= 1.0 or draw() < rate)]

    def window_s(self, model: str) -> float:
        return self._tables[model].window_s


def _show_canary_weight(model: str, previous: ModelPolicy | None, policy: ModelPolicy) -> None:
    old = previous.routing.canary if previous is not None else None
    new = policy.routing.canary
    if old is not None and (new is None or new.version != old.version):
        metrics.CANARY_WEIGHT.labels(model, old.version).set(0.0)
    if new is not None:
        metrics.CANARY_WEIGHT.labels(model, new.version).set(new.weight)
