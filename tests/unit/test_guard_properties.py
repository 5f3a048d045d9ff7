"""Property tests of the guard: flags are exactly the violating rows, clamp always lands in
range, all-ok outputs pass untouched, and the rolling flag rate is the naive one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.guard import Guard, RollingRate
from service.repository.config import ModelConfig

FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)
BOUND = st.none() | st.floats(min_value=-1e6, max_value=1e6, width=32)


@st.composite
def bounds(draw: st.DrawFn) -> tuple[float | None, float | None]:
    low, high = draw(BOUND), draw(BOUND)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return low, high


def guard(policy: str, low: float | None, high: float | None, width: int, **out: Any) -> Guard:
    spec: dict[str, Any] = {"name": "y", "datatype": "FP32", "dims": [width], **out}
    if low is not None or high is not None:
        spec["valid_range"] = {"min": low, "max": high}
    config = ModelConfig.model_validate(
        {
            "name": "prop",
            "backend": "onnxruntime",
            "max_batch_size": 64,
            "inputs": [{"name": "x", "datatype": "FP32", "dims": [1]}],
            "outputs": [spec],
            "guard": {"policy": policy},
        }
    )
    return Guard(config, "prop", policy)


def expected_flags(a: np.ndarray, low: float | None, high: float | None) -> list[list[str]]:
    """The flags of each row, worked out one value at a time."""
    flags = []
    for row in a.tolist():
        found = []
        if not all(math.isfinite(v) for v in row):
            found.append("y:not_finite")
        finite = [v for v in row if math.isfinite(v)]
        if low is not None and any(v < low for v in finite):
            found.append("y:below_min")
        if high is not None and any(v > high for v in finite):
            found.append("y:above_max")
        flags.append(found)
    return flags


def arrays(elements: st.SearchStrategy[float]) -> st.SearchStrategy[np.ndarray]:
    shape = st.tuples(st.integers(1, 12), st.integers(1, 3))
    return hnp.arrays(np.float32, shape, elements=elements)


@given(arrays(FLOATS), bounds())
def test_flags_are_exactly_the_violating_rows(
    a: np.ndarray, limits: tuple[float | None, float | None]
) -> None:
    low, high = limits
    outputs = {"y": a}
    verdict = guard("flag", low, high, a.shape[1]).check(outputs)
    assert verdict.flags == expected_flags(a, low, high)
    assert verdict.outputs is outputs
    assert not verdict.rejected


@given(arrays(FLOATS), bounds())
def test_clamp_lands_in_range_or_rejects_what_it_cannot_fix(
    a: np.ndarray, limits: tuple[float | None, float | None]
) -> None:
    low, high = limits
    verdict = guard("clamp", low, high, a.shape[1]).check({"y": a.copy()})
    if not np.isfinite(a).all():
        assert verdict.rejected
        return
    clamped = verdict.outputs["y"]
    assert clamped.dtype == np.float32
    assert low is None or (clamped >= np.float32(low)).all()
    assert high is None or (clamped <= np.float32(high)).all()
    changed = (clamped != a).any(axis=1)
    assert [bool(f) for f in verdict.flags] == changed.tolist()


@st.composite
def in_range(draw: st.DrawFn) -> tuple[np.ndarray, float, float]:
    low = draw(st.floats(-1e6, 1e6, width=32))
    high = draw(st.floats(low, 1e6, width=32))
    a = draw(arrays(st.floats(low, high, width=32)))
    return a, low, high


@given(in_range(), st.sampled_from(["flag", "reject", "clamp"]))
def test_all_ok_outputs_pass_untouched(case: tuple[np.ndarray, float, float], policy: str) -> None:
    a, low, high = case
    g = guard(policy, low, high, a.shape[1])
    outputs = {"y": a}
    verdict = g.check(outputs)
    assert verdict.outputs is outputs
    assert verdict.row_flags == {}
    assert not verdict.rejected
    assert g.flag_rate == 0.0


@given(
    hnp.arrays(
        np.int64, st.tuples(st.integers(1, 12), st.integers(1, 3)), elements=st.integers(-3, 3)
    ),
    st.sets(st.integers(-3, 3), min_size=1),
)
def test_allowed_flags_rows_holding_any_other_value(a: np.ndarray, allowed: set[int]) -> None:
    g = guard("flag", None, None, a.shape[1], datatype="INT64", allowed=sorted(allowed))
    verdict = g.check({"y": a})
    expected = [["y:not_allowed"] if set(row) - allowed else [] for row in a.tolist()]
    assert verdict.flags == expected


@settings(max_examples=50)
@given(
    st.integers(1, 16),
    st.lists(st.none() | st.lists(st.booleans(), min_size=0, max_size=40), max_size=12),
)
def test_rolling_rate_is_the_share_over_the_last_window(
    window: int, pushes: list[list[bool] | None]
) -> None:
    rate = RollingRate(window)
    seen: list[bool] = []
    for push in pushes:
        values = None if push is None else np.array(push, dtype=np.bool_)
        n = 5 if push is None else len(push)
        got = rate.push(values, n)
        seen += [False] * n if push is None else push
        recent = seen[-window:]
        assert got == (sum(recent) / len(recent) if recent else 0.0)
