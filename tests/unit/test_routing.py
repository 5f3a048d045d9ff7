"""The router: sticky canary and arm assignment, overrides, rollout windows and thresholds."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import ValidationError

from service.pipeline.shadow import abs_diff
from service.protocol.errors import InvalidInput
from service.routing.config import (
    CanaryConfig,
    ModelPolicy,
    RoutingConfig,
    initial_policy,
    read_routing_file,
)
from service.routing.mirror import Mirror
from service.routing.rollout import (
    SlotStats,
    Tally,
    breach,
    latency_bucket,
    slot_stats,
    window_keys,
)
from service.routing.router import Router, bucket, explicit_version

ENTITIES = [f"user-{i}" for i in range(10_000)]


def policy(**routing: object) -> ModelPolicy:
    return initial_policy(RoutingConfig.model_validate(routing), "2", ["1", "2", "3", "4"])


def router_with(**routing: object) -> Router:
    router = Router()
    router.set("fraud", policy(**routing))
    return router


@pytest.mark.parametrize("weight", [0.01, 0.1, 0.5, 0.9])
def test_canary_share_converges_to_its_weight_over_10000_entities(weight: float) -> None:
    router = router_with(canary={"version": "1", "weight": weight})
    on_canary = sum(router.choose("fraud", e).version == "1" for e in ENTITIES)
    n = len(ENTITIES)
    # Each entity is a Bernoulli(weight) draw: 5 standard deviations, or 1 in 1.7 million.
    assert abs(on_canary - weight * n) <= 5 * math.sqrt(n * weight * (1 - weight))


def test_buckets_are_uniform_over_entities() -> None:
    counts = [0] * 10
    for entity in ENTITIES:
        counts[int(bucket("fraud", entity) * 10)] += 1
    # Chi-squared with 9 degrees of freedom: 27.9 is its 0.999 quantile.
    expected = len(ENTITIES) / 10
    assert sum((c - expected) ** 2 / expected for c in counts) < 27.9


def test_assignment_is_sticky_and_the_same_in_every_process() -> None:
    first = router_with(canary={"version": "1", "weight": 0.3})
    again = router_with(canary={"version": "1", "weight": 0.3})  # another process, same policy
    for entity in ENTITIES[:2000]:
        version = first.choose("fraud", entity).version
        assert first.choose("fraud", entity).version == version
        assert again.choose("fraud", entity).version == version


def test_models_hash_entities_independently() -> None:
    router = Router()
    for model in ("fraud", "churn"):
        router.set(model, policy(canary={"version": "1", "weight": 0.5}))
    both = sum(router.choose("fraud", e).route == router.choose("churn", e).route for e in ENTITIES)
    assert abs(both - len(ENTITIES) / 2) < 5 * math.sqrt(len(ENTITIES) / 4)


@settings(max_examples=200, deadline=None)
@given(
    model=st.text(min_size=1, max_size=12),
    key=st.text(max_size=40),
    weights=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2).map(sorted),
)
def test_canary_assignment_is_sticky_across_weight_increase(
    model: str, key: str, weights: list[float]
) -> None:
    low, high = weights
    before = Router()
    before.set(model, policy(canary={"version": "1", "weight": low}))
    after = Router()
    after.set(model, policy(canary={"version": "1", "weight": high}))
    if before.choose(model, key).route == "canary":
        assert after.choose(model, key).route == "canary"


def test_arms_keep_their_users_when_the_canary_grows() -> None:
    arms = {"blue": {"version": "3", "weight": 0.2}, "green": {"version": "4", "weight": 0.1}}
    small = router_with(canary={"version": "1", "weight": 0.05}, arms=arms)
    large = router_with(canary={"version": "1", "weight": 0.6}, arms=arms)
    shares = {"blue": 0, "green": 0, "canary": 0, "primary": 0}
    for entity in ENTITIES:
        chosen = small.choose("fraud", entity)
        shares[chosen.route] += 1
        if chosen.route in arms:
            assert large.choose("fraud", entity) == chosen
    n = len(ENTITIES)
    for route, weight in (("blue", 0.2), ("green", 0.1), ("canary", 0.05), ("primary", 0.65)):
        assert abs(shares[route] - weight * n) <= 5 * math.sqrt(n * weight * (1 - weight))
    assert small.choose("fraud", ENTITIES[0]).slot.startswith(
        ("blue/3", "green/4", "canary/1/", "primary/2")
    )


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        (
            {
                "canary": {"version": "1", "weight": 0.7},
                "arms": {"a": {"version": "3", "weight": 0.4}},
            },
            "add up to 1.1",
        ),
        ({"stable": "2", "canary": {"version": "2", "weight": 0.1}}, "is the stable version"),
        ({"stable": "2", "shadow": [{"version": "2"}]}, "is the stable version"),
        ({"shadow": [{"version": "1"}, {"version": "1"}]}, "twice"),
        ({"arms": {"canary": {"version": "1", "weight": 0.1}}}, "arm name 'canary'"),
        ({"canary": {"version": "v1", "weight": 0.1}}, "is not a version"),
        ({"canary": {"version": "1", "weight": 1.5}}, "less than or equal to 1"),
    ],
)
def test_inconsistent_routing_is_refused(routing: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RoutingConfig.model_validate(routing)


def test_integer_versions_read_as_version_names() -> None:
    routing = RoutingConfig.model_validate({"stable": 2, "canary": {"version": 1, "weight": 0.5}})
    assert routing.stable == "2" and routing.canary is not None and routing.canary.version == "1"
    assert routing.versions() == {"1", "2"}


def test_a_routing_file_names_the_field_at_fault(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("fraud: {canary: {version: 1, weight: 0.25}}\n")
    (name, routing), *_ = read_routing_file(path).items()
    assert name == "fraud" and routing.canary == CanaryConfig(version="1", weight=0.25)
    path.write_text("fraud: {canary: {version: 1}}\n")
    with pytest.raises(ValueError, match=r"routing\.yaml: fraud\.canary\.weight: Field required"):
        read_routing_file(path)
    path.write_text("- fraud\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        read_routing_file(path)


def test_explicit_version_comes_from_url_header_or_parameter() -> None:
    assert explicit_version("1", "2", {"mlgate_version": "3"}) == "1"
    assert explicit_version(None, "2", {"mlgate_version": "3"}) == "2"
    assert explicit_version(None, None, {"mlgate_version": 3}) == "3"
    assert explicit_version(None, None, {}) is None
    with pytest.raises(InvalidInput, match="mlgate_version"):
        explicit_version(None, None, {"mlgate_version": [1]})


def test_shadows_are_sampled_and_never_the_answering_version() -> None:
    router = router_with(
        canary={"version": "1", "weight": 0.5},
        shadow=[{"version": "1"}, {"version": "3", "sample_rate": 0.25}],
    )
    assert router.shadows("fraud", "2", lambda: 0.9) == ["1"]
    assert router.shadows("fraud", "2", lambda: 0.1) == ["1", "3"]
    assert router.shadows("fraud", "1", lambda: 0.1) == ["3"]


# ---- rollout windows -----------------------------------------------------------------------


def judged(**limits: object) -> ModelPolicy:
    rollback = {"window_s": 10, "min_requests": 50, **limits}
    return policy(canary={"version": "1", "weight": 0.2}, rollback=rollback)


Request = tuple[str, bool, bool, float]  # slot, error, flagged, seconds


def tallied(p: ModelPolicy, requests: list[Request]) -> dict[str, SlotStats]:
    """Counts of (slot, error, flagged, seconds) requests, through a Tally and back."""
    tally = Tally()
    for slot, error, flagged, seconds in requests:
        tally.request("fraud", 10.0, slot, error=error, flagged=flagged, seconds=seconds, now=5.0)
    merged: dict[str, float] = {}
    for fields in tally.take().values():
        for name, value in fields.items():
            merged[name] = merged.get(name, 0.0) + value
    return slot_stats(merged)


def canary_traffic(
    p: ModelPolicy, n: int, errors: int = 0, flagged: int = 0, seconds: float = 0.001
) -> list[Request]:
    slot = p.canary_slot()
    assert slot is not None
    return [(slot, i < errors, i < flagged, seconds) for i in range(n)]


def stable_traffic(p: ModelPolicy, n: int, seconds: float = 0.001) -> list[Request]:
    return [(p.primary_slot(), False, False, seconds) for _ in range(n)]


def test_error_rate_above_its_limit_rolls_back() -> None:
    p = judged(max_error_rate=0.05)
    assert breach(p, tallied(p, canary_traffic(p, 100, errors=5))) is None
    found = breach(p, tallied(p, canary_traffic(p, 100, errors=6)))
    assert found is not None and found.reason == "error_rate"
    assert "0.0600 > 0.05 over 100 canary requests" in found.detail


def test_nothing_is_judged_below_min_requests() -> None:
    p = judged(max_error_rate=0.0, max_flag_rate=0.0)
    assert breach(p, tallied(p, canary_traffic(p, 49, errors=49, flagged=49))) is None


def test_flag_rate_above_its_limit_rolls_back() -> None:
    p = judged(max_flag_rate=0.1)
    found = breach(p, tallied(p, canary_traffic(p, 60, flagged=7)))
    assert found is not None and found.reason == "flag_rate"


def test_p99_ratio_to_the_stable_version_rolls_back() -> None:
    p = judged(max_p99_ratio=2.0)
    fast = stable_traffic(p, 100, seconds=0.001)
    assert breach(p, tallied(p, fast + canary_traffic(p, 100, seconds=0.0015))) is None
    found = breach(p, tallied(p, fast + canary_traffic(p, 100, seconds=0.005)))
    assert found is not None and found.reason == "p99_ratio"
    # Without enough stable traffic to compare with, the ratio is not judged.
    assert breach(p, tallied(p, fast[:10] + canary_traffic(p, 100, seconds=0.005))) is None


def test_shadow_disagreement_of_the_canary_version_rolls_back() -> None:
    p = judged(max_disagreement=0.2)
    tally = Tally()
    for _ in range(60):
        tally.request("fraud", 10.0, "shadow/1", error=False, flagged=False, seconds=0.001, now=5.0)
    tally.comparison("fraud", 10.0, "shadow/1", rows=480, disagreed=120, diff=12.0, now=5.0)
    (fields,) = tally.take().values()
    stats = slot_stats(fields)
    assert stats["shadow/1"].summary()["agreement_rate"] == 0.75
    found = breach(p, stats)
    assert found is not None and found.reason == "disagreement"


def test_a_canary_at_weight_0_or_without_limits_is_not_judged() -> None:
    off = policy(canary={"version": "1", "weight": 0.0}, rollback={"max_error_rate": 0.0})
    free = policy(canary={"version": "1", "weight": 0.5})
    for p in (off, free):
        slot = f"canary/1/{p.canary_since_ms}"
        assert breach(p, tallied(p, [(slot, True, True, 1.0)] * 500)) is None


def test_a_re_enabled_canary_starts_a_clean_window() -> None:
    p = judged(max_error_rate=0.0)
    stats = tallied(p, canary_traffic(p, 100, errors=100))
    again = p.model_copy(update={"canary_since_ms": p.canary_since_ms + 1})
    assert breach(p, stats) is not None and breach(again, stats) is None


def test_p99_is_the_bucket_bound_above_the_99th_percentile() -> None:
    stats = SlotStats()
    for ms in [1.0] * 98 + [10.0, 100.0]:
        stats.latency[latency_bucket(ms / 1000)] += 1
    p99 = stats.p99_s()
    assert p99 is not None and 0.010 <= p99 < 0.0125


def test_window_keys_cover_the_window_in_ten_buckets() -> None:
    keys = window_keys("fraud", 60.0, 1000.0)
    assert len(keys) == 10 and keys[-1] == "fraud|6000|166" and keys[0] == "fraud|6000|157"
    tally = Tally()
    tally.request("fraud", 60.0, "primary/2", error=False, flagged=False, seconds=0.001, now=1000.0)
    assert list(tally.take()) == [keys[-1]]


def test_shadow_answers_are_compared_row_by_row_on_their_largest_difference() -> None:
    primary = {"p": np.array([[0.1, 0.5], [0.2, 0.2], [0.3, 0.3]]), "label": np.array(["a"] * 3)}
    shadow = {"p": np.array([[0.1, 0.9], [0.2, 0.25], [np.nan, 0.3]]), "label": primary["label"]}
    diff = abs_diff(primary, shadow)
    assert diff is not None
    np.testing.assert_allclose(diff[:2], [0.4, 0.05])
    assert np.isnan(diff[2])  # counted as disagreeing, kept out of the histogram
    assert abs_diff(primary, {"q": primary["p"]}) is None


# ---- shadow queue --------------------------------------------------------------------------


async def test_a_full_shadow_queue_drops_copies_and_counts_them() -> None:
    release = asyncio.Event()
    ran: list[int] = []

    async def slow(job: int) -> None:
        await release.wait()
        ran.append(job)

    mirror: Mirror[int] = Mirror(slow, size=2, workers=1)

    def dropped() -> float:
        value = REGISTRY.get_sample_value(
            "mlgate_shadow_dropped_total", {"model": "unit", "version": "9"}
        )
        return value or 0.0

    before = dropped()
    accepted = [mirror.submit(i, "unit", "9") for i in range(5)]
    await asyncio.sleep(0)  # the worker takes the first copy, making room for one more
    accepted.append(mirror.submit(5, "unit", "9"))
    assert accepted == [True, True, False, False, False, True]
    assert dropped() - before == 3
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert ran == [0, 1, 5]
    await mirror.close()
