"""Which version answers a request: stable, sticky canary, A/B arms, shadows and overrides;
and the windows of traffic figures that guarded rollout judges the canary by.

The `routing` section of a model's config.yaml:

    routing:
      stable: "2"                                  # default: default_version
      canary: {version: "1", weight: 0.1}
      shadow: [{version: "3", sample_rate: 1.0}]   # mirrored after the primary answer
      arms: {blue: {version: "1", weight: 0.2}}    # named A/B arms: weights over versions
      agreement_tolerance: 0.01                    # |primary - shadow| above this disagrees
      rollback: {window_s: 60, min_requests: 100, max_error_rate: 0.05, max_flag_rate: 0.1,
                 max_p99_ratio: 2.0, max_disagreement: 0.2}

Assignment is sticky: a request's key (its first entity id, else its request id) hashes with
the model name to a bucket in [0, 1). The canary takes the buckets below its weight, the arms
take theirs down from 1 in name order, and the stable version the rest, so raising the canary's
weight keeps everyone already on it there, and never moves an arm's users.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service import metrics
from service.protocol.errors import InvalidInput

log = logging.getLogger(__name__)

# An explicit version, as a request header or a V2 request parameter, bypasses routing.
VERSION_HEADER = "x-mlgate-version"
VERSION_PARAMETER = "mlgate_version"

PRIMARY = "primary"
CANARY = "canary"
SHADOW = "shadow"
OVERRIDE = "override"
_RESERVED_ROUTES = frozenset({PRIMARY, CANARY, SHADOW, OVERRIDE})
_ARM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# A window is this many buckets: counters older than the window fall out a bucket at a time.
WINDOW_BUCKETS = 10
# Latency buckets of the rollout windows, 25% apart from 50 µs: p99 within 25% is plenty for a
# ratio to a threshold, and 60 counters a route stay cheap to ship between processes.
_LATENCY_BASE_S = 50e-6
_LATENCY_STEP = 1.25
_LATENCY_BOUNDS = tuple(_LATENCY_BASE_S * _LATENCY_STEP**i for i in range(60))
# Changes kept in a policy's history (the admin API shows them).
HISTORY = 50


def _version_name(value: str) -> str:
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{value!r} is not a version; versions are directories named by digits")
    return value


class CanaryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    version: str
    weight: float = Field(ge=0.0, le=1.0)

    _version = field_validator("version")(_version_name)


class ShadowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    version: str
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)

    _version = field_validator("version")(_version_name)


class ArmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    version: str
    weight: float = Field(gt=0.0, le=1.0)

    _version = field_validator("version")(_version_name)


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


class RoutingConfig(BaseModel):
    """The `routing` section of config.yaml, and the policy the admin API changes."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    stable: str | None = None
    canary: CanaryConfig | None = None
    shadow: list[ShadowConfig] = Field(default_factory=list)
    arms: dict[str, ArmConfig] = Field(default_factory=dict)
    agreement_tolerance: float = Field(default=0.01, ge=0.0)
    rollback: RollbackConfig | None = None

    @field_validator("stable")
    @classmethod
    def _stable_version(cls, value: str | None) -> str | None:
        return None if value is None else _version_name(value)

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
    reason: str  # error_rate | flag_rate | p99_ratio | disagreement
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
            error = exc.errors()[0]
            where = ".".join(str(p) for p in (model, *error["loc"]))
            raise ValueError(f"{path}: {where}: {error['msg']}") from None
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


# ---- rollout windows ---------------------------------------------------------------------


def latency_bucket(seconds: float) -> int:
    return min(bisect.bisect_left(_LATENCY_BOUNDS, seconds), len(_LATENCY_BOUNDS) - 1)


def _bucket(window_s: float, now: float) -> tuple[int, int]:
    """(bucket width in ms, index of the bucket holding `now`) for a window of `window_s`."""
    width_ms = max(1, round(window_s * 1000 / WINDOW_BUCKETS))
    return width_ms, int(now * 1000) // width_ms


def window_keys(model: str, window_s: float, now: float) -> list[str]:
    """The counter keys of the window ending now, oldest first (the last one still filling)."""
    width_ms, current = _bucket(window_s, now)
    return [f"{model}|{width_ms}|{i}" for i in range(current - WINDOW_BUCKETS + 1, current + 1)]


class Tally:
    """This process's counts since they were last shipped to the policy store.

    {window key: {field: count}}; fields are `<slot>:<figure>`, figures n (requests), err,
    flag, l<i> (latency bucket i), cmp and dis (rows compared and disagreeing), diff (the sum
    of their absolute differences).
    """

    def __init__(self) -> None:
        self._pending: defaultdict[str, defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float)
        )
        # (model, window) -> key of the current bucket, with the time it stops being current.
        self._current: dict[tuple[str, float], tuple[str, float]] = {}

    def _fields(self, model: str, window_s: float, now: float) -> defaultdict[str, float]:
        current = self._current.get((model, window_s))
        if current is None or now >= current[1]:
            width_ms, index = _bucket(window_s, now)
            current = (f"{model}|{width_ms}|{index}", (index + 1) * width_ms / 1000)
            self._current[(model, window_s)] = current
        return self._pending[current[0]]

    def request(
        self,
        model: str,
        window_s: float,
        slot: str,
        *,
        error: bool,
        flagged: bool,
        seconds: float,
        now: float,
    ) -> None:
        fields = self._fields(model, window_s, now)
        fields[f"{slot}:n"] += 1
        if error:
            fields[f"{slot}:err"] += 1
        if flagged:
            fields[f"{slot}:flag"] += 1
        if not error:
            fields[f"{slot}:l{latency_bucket(seconds)}"] += 1

    def comparison(
        self,
        model: str,
        window_s: float,
        slot: str,
        *,
        rows: int,
        disagreed: int,
        diff: float,
        now: float,
    ) -> None:
        fields = self._fields(model, window_s, now)
        fields[f"{slot}:cmp"] += rows
        fields[f"{slot}:dis"] += disagreed
        fields[f"{slot}:diff"] += diff

    def take(self) -> dict[str, dict[str, float]]:
        pending = {key: dict(fields) for key, fields in self._pending.items() if fields}
        self._pending.clear()
        return pending


@dataclass
class SlotStats:
    """One route's figures over a window, every process's traffic summed."""

    requests: int = 0
    errors: int = 0
    flagged: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(_LATENCY_BOUNDS))
    compared: int = 0
    disagreed: int = 0
    diff_sum: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.requests if self.requests else 0.0

    @property
    def disagreement(self) -> float:
        return self.disagreed / self.compared if self.compared else 0.0

    def p99_s(self) -> float | None:
        """The upper bound of the latency bucket holding the 99th percentile (None: no data)."""
        total = sum(self.latency)
        if not total:
            return None
        rank = math.ceil(0.99 * total)
        seen = 0
        for i, count in enumerate(self.latency):
            seen += count
            if seen >= rank:
                return _LATENCY_BOUNDS[i]
        return _LATENCY_BOUNDS[-1]

    def summary(self) -> dict[str, Any]:
        p99 = self.p99_s()
        figures: dict[str, Any] = {
            "requests": self.requests,
            "error_rate": round(self.error_rate, 6),
            "flag_rate": round(self.flag_rate, 6),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        }
        if self.compared:
            figures |= {
                "rows_compared": self.compared,
                "agreement_rate": round(1.0 - self.disagreement, 6),
                "mean_abs_diff": self.diff_sum / self.compared,
            }
        return figures


def slot_stats(counts: Mapping[str, float]) -> dict[str, SlotStats]:
    """Summed window counters, by slot."""
    slots: dict[str, SlotStats] = {}
    for name, value in counts.items():
        slot, _, figure = name.rpartition(":")
        stats = slots.get(slot)
        if stats is None:
            stats = slots[slot] = SlotStats()
        if figure == "n":
            stats.requests += int(value)
        elif figure == "err":
            stats.errors += int(value)
        elif figure == "flag":
            stats.flagged += int(value)
        elif figure == "cmp":
            stats.compared += int(value)
        elif figure == "dis":
            stats.disagreed += int(value)
        elif figure == "diff":
            stats.diff_sum += value
        elif figure.startswith("l") and figure[1:].isdigit():
            i = int(figure[1:])
            if i < len(stats.latency):
                stats.latency[i] += int(value)
    return slots


@dataclass(frozen=True)
class Breach:
    reason: str
    detail: str


def breach(policy: ModelPolicy, window: Mapping[str, SlotStats]) -> Breach | None:
    """The first rollback threshold the canary crosses in `window`, if any."""
    routing = policy.routing
    limits, canary = routing.rollback, routing.canary
    if limits is None or canary is None or canary.weight == 0:
        return None
    slot = policy.canary_slot()
    stats = window.get(slot) if slot is not None else None
    if stats is not None and stats.requests >= limits.min_requests:
        seen = f"over {stats.requests} canary requests"
        if limits.max_error_rate is not None and stats.error_rate > limits.max_error_rate:
            return Breach(
                "error_rate",
                f"error rate {stats.error_rate:.4f} > {limits.max_error_rate:g} {seen}",
            )
        if limits.max_flag_rate is not None and stats.flag_rate > limits.max_flag_rate:
            return Breach(
                "flag_rate", f"flag rate {stats.flag_rate:.4f} > {limits.max_flag_rate:g} {seen}"
            )
        stable = window.get(policy.primary_slot())
        if limits.max_p99_ratio is not None and stable is not None:
            ratio = _p99_ratio(stats, stable, limits.min_requests)
            if ratio is not None and ratio > limits.max_p99_ratio:
                return Breach(
                    "p99_ratio",
                    f"p99 {ratio:.2f}x the stable version's > {limits.max_p99_ratio:g} {seen}",
                )
    shadow = window.get(f"{SHADOW}/{canary.version}")
    if (
        limits.max_disagreement is not None
        and shadow is not None
        and shadow.requests >= limits.min_requests
        and shadow.disagreement > limits.max_disagreement
    ):
        return Breach(
            "disagreement",
            f"shadow disagreement {shadow.disagreement:.4f} > {limits.max_disagreement:g} "
            f"over {shadow.compared} rows",
        )
    return None


def _p99_ratio(canary: SlotStats, stable: SlotStats, min_requests: int) -> float | None:
    if stable.requests < min_requests:
        return None
    ours, theirs = canary.p99_s(), stable.p99_s()
    if ours is None or theirs is None:
        return None
    return ours / theirs


# ---- shadow copies -----------------------------------------------------------------------

J = TypeVar("J")


class Mirror(Generic[J]):
    """Shadow copies: a bounded queue and a few workers of their own.

    `submit` never waits: with the queue full the copy is dropped and counted, so a slow shadow
    version costs its own traffic, never the primary's.
    """

    def __init__(self, run: Callable[[J], Awaitable[None]], size: int, workers: int) -> None:
        self._run = run
        self._queue: asyncio.Queue[J] = asyncio.Queue(size)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, job: J, model: str, version: str) -> bool:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers)]
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            metrics.shadow_dropped(model, version).inc()
            return False
        metrics.SHADOW_QUEUE_DEPTH.set(self._queue.qsize())
        return True

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            metrics.SHADOW_QUEUE_DEPTH.set(self._queue.qsize())
            try:
                await self._run(job)
            except Exception:
                # The run records its own failures; anything else must not end the worker.
                log.exception("shadow copy failed")

    async def close(self) -> None:
        """Stop; copies still queued are dropped (nobody waits for their answers)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
