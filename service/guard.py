"""Output contracts, and what to do with a prediction that breaks one.

The contracts sit on each output of config.yaml: `valid_range: {min, max}`, `allowed: [..]`
(a class set), the shape in `dims`, and, always on for floating outputs, finiteness (NaN or
inf is a violation). The policy is the model's `guard:` section:

    guard:
      policy: flag                # flag | reject | clamp | fallback
      fallback: {version: "1"}    # policy fallback only; or {default: {probability: 0.0}}
      flag_rate_window: 1000      # predictions in the rolling flag-rate gauge

- flag: serve as is; the broken rows carry flags.
- reject: refuse the request (422) with the reasons.
- clamp: put out-of-range values at the bound; a violation no bound fixes (NaN or inf, a
  value outside `allowed`) rejects the request instead, since clamp promises in-range values.
- fallback: serve the broken rows from the fallback version (the caller runs it, see
  `fallback_inputs` and `merge_fallback`) or the configured defaults. On the fallback version
  itself there is nothing to fall back to, so its broken predictions are rejected.

A wrong shape is a broken model, not a bad prediction: it cannot be marked, clamped or patched
row by row, so it is rejected whatever the policy. A flag reads `<output>:<reason>`, reason one
of not_finite, below_min, above_max, not_allowed, bad_shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, Self

import numpy as np
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.metrics import GUARD_EVENTS, GUARD_FLAG_RATE
from service.protocol.datatypes import V2_TO_NUMPY
from service.versions import VersionName

Policy = Literal["flag", "reject", "clamp", "fallback"]
Action = Literal["flagged", "rejected", "clamped", "fallback"]
_ACTIONS: dict[Policy, Action] = {
    "flag": "flagged",
    "reject": "rejected",
    "clamp": "clamped",
    "fallback": "fallback",
}
# Row numbers quoted in a rejection message, per reason.
_QUOTED_ROWS = 5


class Fallback(BaseModel):
    """Where a broken prediction's replacement comes from: another version, or constants."""

    # `version: 1` reads as an int from YAML; versions are directory names, so strings.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    version: VersionName | None = None
    default: dict[str, float] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.version is None) == (self.default is None):
            raise ValueError("give either version or default, not both nor neither")
        return self


class GuardConfig(BaseModel):
    """The `guard` section of a model's config.yaml."""

    model_config = ConfigDict(extra="forbid")

    policy: Policy = "flag"
    fallback: Fallback | None = None
    flag_rate_window: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _fallback_with_its_policy(self) -> Self:
        if self.policy == "fallback" and self.fallback is None:
            raise ValueError(
                "policy fallback needs fallback: {version: ...} or {default: {output: value}}"
            )
        if self.policy != "fallback" and self.fallback is not None:
            raise ValueError(f"fallback is only used with policy fallback, not {self.policy}")
        return self


class RangeLike(Protocol):
    @property
    def min(self) -> float | None: ...

    @property
    def max(self) -> float | None: ...


class OutputContract(Protocol):
    """What the guard reads of an output spec (service.repository.config.OutputSpec fits)."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def dims(self) -> list[int]: ...

    @property
    def valid_range(self) -> RangeLike | None: ...

    @property
    def allowed(self) -> list[float] | None: ...


class GuardedModel(Protocol):
    """What the guard reads of a model's config (service.repository.config.ModelConfig fits)."""

    @property
    def max_batch_size(self) -> int: ...

    @property
    def outputs(self) -> Sequence[OutputContract]: ...

    @property
    def guard(self) -> GuardConfig: ...


def guard_config_errors(guard: GuardConfig, outputs: Sequence[OutputContract]) -> list[str]:
    """What in `guard` does not fit the model's `outputs`; field paths relative to `guard`."""
    errors = [
        f"output '{o.name}': flags name their output and are comma-separated; rename it"
        for o in outputs
        if "," in o.name
    ]
    default = guard.fallback.default if guard.fallback is not None else None
    if default is None:
        return errors
    by_name = {o.name: o for o in outputs}
    errors += [
        f"fallback.default.{name}: no such output; outputs: {', '.join(by_name)}"
        for name in default
        if name not in by_name
    ]
    for name, spec in by_name.items():
        if name not in default:
            errors.append(f"fallback.default: gives no value for output '{name}'")
            continue
        value = default[name]
        kind = V2_TO_NUMPY[spec.datatype].kind
        where = f"fallback.default.{name}"
        if kind == "O":
            errors.append(f"{where}: a {spec.datatype} output has no numeric default")
        elif kind != "f" and not value.is_integer():
            errors.append(f"{where}: {value} is not a whole number, as {spec.datatype} needs")
        elif broken := _broken_by(value, spec):
            errors.append(f"{where}: {value} breaks the output's own contract ({broken})")
    return errors


def _broken_by(value: float, spec: OutputContract) -> str | None:
    bounds = spec.valid_range
    if not math.isfinite(value):
        return "not finite"
    if bounds is not None and bounds.min is not None and value < bounds.min:
        return f"below min {bounds.min}"
    if bounds is not None and bounds.max is not None and value > bounds.max:
        return f"above max {bounds.max}"
    if spec.allowed is not None and value not in spec.allowed:
        return f"not in allowed {spec.allowed}"
    return None


@dataclass(slots=True)
class Verdict:
    """What the guard made of one batch of outputs.

    `outputs` are the ones to serve: clamped or defaulted where the policy says so. When
    `rejection` is set the request must fail with it (422). When `needs_fallback_rows` is set
    those rows are to be served from the fallback version (Guard.merge_fallback).
    """

    outputs: dict[str, np.ndarray]
    rows: int
    # Only the rows that broke a contract: row -> flags, e.g. ["probability:above_max"].
    row_flags: dict[int, list[str]] = field(default_factory=dict)
    # Every flag of the batch once, in output and contract order: the audit record's flags.
    reasons: list[str] = field(default_factory=list)
    action: Action | None = None
    rejection: str | None = None
    needs_fallback_rows: np.ndarray | None = None

    @property
    def rejected(self) -> bool:
        return self.rejection is not None

    @property
    def flags(self) -> list[list[str]]:
        """Per row, the contracts it broke ([] for a row that kept them all)."""
        return [self.row_flags.get(i, []) for i in range(self.rows)]


class RollingRate:
    """The share of true values among the last `window` pushed, kept in a ring buffer."""

    def __init__(self, window: int) -> None:
        self._ring = np.zeros(window, dtype=np.bool_)
        self._pos = 0
        self._filled = 0
        self._count = 0

    @property
    def rate(self) -> float:
        return self._count / self._filled if self._filled else 0.0

    def push(self, values: np.ndarray | None, n: int) -> float:
        """Push `n` values (`values`, or n falses when None); the rate after them."""
        ring = self._ring
        window = len(ring)
        if n >= window:
            ring[:] = False if values is None else values[n - window :]
            self._count = int(np.count_nonzero(ring))
            self._pos, self._filled = 0, window
            return self.rate
        if values is not None or self._count:
            first = min(n, window - self._pos)
            # At most two slices: up to the end of the ring, then from its start.
            for dst, src in (
                (slice(self._pos, self._pos + first), slice(0, first)),
                (slice(0, n - first), slice(first, n)),
            ):
                self._count -= int(np.count_nonzero(ring[dst]))
                if values is None:
                    ring[dst] = False
                else:
                    ring[dst] = values[src]
                    self._count += int(np.count_nonzero(values[src]))
        # Otherwise the ring holds no true value, and n falses leave it as it is.
        self._pos = (self._pos + n) % window
        self._filled = min(window, self._filled + n)
        return self.rate


@dataclass(frozen=True, slots=True)
class _Contract:
    """One output's contract, worked out once per model version."""

    name: str
    shape: tuple[int, ...]  # the batch dimension included; -1 takes any size
    finite: bool
    low: float | None
    high: float | None
    allowed: np.ndarray | None
    clamp_low: float | None
    clamp_high: float | None

    @classmethod
    def of(cls, spec: OutputContract, batched: bool) -> _Contract:
        dtype = V2_TO_NUMPY[spec.datatype]
        bounds = spec.valid_range
        low = bounds.min if bounds is not None else None
        high = bounds.max if bounds is not None else None
        whole = dtype.kind in "biu"
        return cls(
            name=spec.name,
            shape=((-1,) if batched else ()) + tuple(spec.dims),
            finite=dtype.kind == "f",
            low=low,
            high=high,
            allowed=None if spec.allowed is None else np.array(spec.allowed, dtype=dtype),
            # An integer output clamped to a fractional bound must still keep the bound.
            clamp_low=math.ceil(low) if whole and low is not None else low,
            clamp_high=math.floor(high) if whole and high is not None else high,
        )

    def shape_fits(self, shape: tuple[int, ...], rows: int, batched: bool) -> bool:
        if len(shape) != len(self.shape) or (batched and shape[0] != rows):
            return False
        return all(want in (-1, have) for want, have in zip(self.shape, shape, strict=True))

    def certainly_kept(self, a: np.ndarray) -> bool:
        """True when `a` keeps the contract, found with two reductions; False: look closer."""
        if self.allowed is not None:
            return False
        if not (self.finite or self.low is not None or self.high is not None) or not a.size:
            return True
        low, high = float(a.min()), float(a.max())
        # min and max are NaN when any value is, and NaN fails every comparison.
        return (
            (self.low is None or low >= self.low)
            and (self.high is None or high <= self.high)
            and (not self.finite or (math.isfinite(low) and math.isfinite(high)))
        )

    def violations(self, a: np.ndarray, rows: int) -> Iterator[tuple[str, np.ndarray]]:
        """(reason, rows that break it) for each broken part of the contract."""
        flat = a.reshape(rows, a.size // rows)
        finite: np.ndarray | None = None
        if self.finite:
            finite = np.isfinite(flat)
            if not finite.all():
                yield "not_finite", ~np.all(finite, axis=1)
            else:
                finite = None
        for reason, bound, beyond in (
            ("below_min", self.low, np.less),
            ("above_max", self.high, np.greater),
        ):
            if bound is None:
                continue
            # NaN compares false; inf is reported as not_finite only.
            out = beyond(flat, bound)
            if out.any():
                if finite is not None:
                    out &= finite
                rows_out = np.any(out, axis=1)
                if rows_out.any():
                    yield reason, rows_out
        if self.allowed is not None:
            outside = ~np.isin(flat, self.allowed)
            if outside.any():
                yield "not_allowed", np.any(outside, axis=1)


class Guard:
    """Checks one model version's outputs against their contracts and applies the policy.

    Not thread-safe: call it from one thread (the event loop), since it keeps the rolling
    flag rate.
    """

    def __init__(self, config: GuardedModel, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.policy: Policy = config.guard.policy
        self._batched = config.max_batch_size > 0
        self._contracts = [_Contract.of(spec, self._batched) for spec in config.outputs]
        fallback = config.guard.fallback
        self.fallback_version = fallback.version if fallback is not None else None
        self._defaults = fallback.default if fallback is not None else None
        self._rate = RollingRate(config.guard.flag_rate_window)
        self._rate_gauge = GUARD_FLAG_RATE.labels(model, version)
        self._rate_gauge.set(0.0)
        self._events: dict[tuple[str, str], Counter] = {}

    @property
    def flag_rate(self) -> float:
        return self._rate.rate

    def check(self, outputs: dict[str, np.ndarray]) -> Verdict:
        """The verdict on one batch; pass every output the model answered."""
        rows = self._rows(outputs)
        for c in self._contracts:
            a = outputs.get(c.name)
            if a is not None and not c.shape_fits(a.shape, rows, self._batched):
                return self._bad_shape(outputs, rows, c, a.shape)
        broken: list[tuple[str, np.ndarray]] = []
        if rows:
            for c in self._contracts:
                a = outputs.get(c.name)
                if a is not None and not c.certainly_kept(a):
                    broken += ((f"{c.name}:{why}", bad) for why, bad in c.violations(a, rows))
        if not broken:
            self._rate_gauge.set(self._rate.push(None, rows))
            return Verdict(outputs, rows)
        any_broken = np.logical_or.reduce([bad for _, bad in broken])
        self._rate_gauge.set(self._rate.push(any_broken, rows))
        verdict = Verdict(outputs, rows, _row_flags(broken), [reason for reason, _ in broken])
        self._apply_policy(verdict, broken, any_broken)
        assert verdict.action is not None
        for reason, bad in broken:
            self._count(verdict.action, reason, int(np.count_nonzero(bad)))
        return verdict

    def fallback_inputs(
        self, inputs: dict[str, np.ndarray], verdict: Verdict
    ) -> dict[str, np.ndarray]:
        """The inputs of the rows to score on the fallback version."""
        rows = verdict.needs_fallback_rows
        if rows is None or not self._batched:
            return inputs
        return {name: a[rows] for name, a in inputs.items()}

    def merge_fallback(
        self, verdict: Verdict, fallback_outputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """`verdict.outputs` with the fallen-back rows taken from `fallback_outputs`, the
        fallback version's answer to `fallback_inputs`."""
        rows = verdict.needs_fallback_rows
        if rows is None:
            return verdict.outputs
        if not self._batched:
            return {name: fallback_outputs[name] for name in verdict.outputs}
        merged = {}
        for name, a in verdict.outputs.items():
            a = a.copy()
            a[rows] = fallback_outputs[name]
            merged[name] = a
        return merged

    def _rows(self, outputs: dict[str, np.ndarray]) -> int:
        if not self._batched:
            return 1
        for c in self._contracts:
            a = outputs.get(c.name)
            if a is not None and a.ndim:
                return int(a.shape[0])
        return 1

    def _bad_shape(
        self, outputs: dict[str, np.ndarray], rows: int, c: _Contract, shape: tuple[int, ...]
    ) -> Verdict:
        reason = f"{c.name}:bad_shape"
        self._rate_gauge.set(self._rate.push(np.ones(rows, dtype=np.bool_), rows))
        self._count("rejected", reason, rows)
        expected = ["n" if d == -1 else d for d in c.shape]
        return Verdict(
            outputs,
            rows,
            {i: [reason] for i in range(rows)},
            [reason],
            action="rejected",
            rejection=f"model '{self.model}' version {self.version}: output '{c.name}' has "
            f"shape {list(shape)}, expected {expected} for {rows} rows",
        )

    def _apply_policy(
        self, verdict: Verdict, broken: list[tuple[str, np.ndarray]], any_broken: np.ndarray
    ) -> None:
        policy = self.policy
        unfixable = [r for r, _ in broken if not r.endswith(("below_min", "above_max"))]
        if policy == "clamp" and unfixable:
            policy = "reject"
            note = f"; clamping cannot fix {', '.join(unfixable)}"
        elif policy == "fallback" and self.fallback_version == self.version:
            policy = "reject"
            note = "; this is the fallback version, so there is nothing to fall back to"
        else:
            note = ""
        verdict.action = _ACTIONS[policy]
        if policy == "reject":
            summary = ", ".join(f"{reason} ({_quote_rows(bad)})" for reason, bad in broken)
            verdict.rejection = (
                f"model '{self.model}' version {self.version}: prediction breaks its output "
                f"contract: {summary}{note}"
            )
        elif policy == "clamp":
            verdict.outputs = self._clamped(verdict.outputs, {r for r, _ in broken})
        elif policy == "fallback" and self._defaults is not None:
            verdict.outputs = self._defaulted(verdict.outputs, any_broken)
        elif policy == "fallback":
            verdict.needs_fallback_rows = any_broken

    def _clamped(self, outputs: dict[str, np.ndarray], reasons: set[str]) -> dict[str, np.ndarray]:
        clamped = dict(outputs)
        for c in self._contracts:
            if f"{c.name}:below_min" in reasons or f"{c.name}:above_max" in reasons:
                a = outputs[c.name]
                clamped[c.name] = np.clip(a, c.clamp_low, c.clamp_high).astype(a.dtype)
        return clamped

    def _defaulted(self, outputs: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        assert self._defaults is not None
        if not self._batched:
            return {name: np.full_like(a, self._defaults[name]) for name, a in outputs.items()}
        defaulted = {}
        for name, a in outputs.items():
            a = a.copy()
            a[rows] = self._defaults[name]
            defaulted[name] = a
        return defaulted

    def _count(self, action: str, reason: str, rows: int) -> None:
        counter = self._events.get((action, reason))
        if counter is None:
            counter = self._events[(action, reason)] = GUARD_EVENTS.labels(
                self.model, self.version, action, reason
            )
        counter.inc(rows)


def _row_flags(broken: list[tuple[str, np.ndarray]]) -> dict[int, list[str]]:
    flags: dict[int, list[str]] = {}
    for reason, bad in broken:
        for row in np.flatnonzero(bad).tolist():
            flags.setdefault(row, []).append(reason)
    return dict(sorted(flags.items()))


def _quote_rows(bad: np.ndarray) -> str:
    rows = np.flatnonzero(bad)
    quoted = ", ".join(map(str, rows[:_QUOTED_ROWS].tolist()))
    more = f" and {len(rows) - _QUOTED_ROWS} more" if len(rows) > _QUOTED_ROWS else ""
    return f"row{'s' if len(rows) > 1 else ''} {quoted}{more}"
