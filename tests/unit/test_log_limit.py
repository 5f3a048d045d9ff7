"""A repeating warning logs once per interval, with the count of those held back."""

from __future__ import annotations

import logging

import pytest

from service.log_limit import Repeated


def test_a_flood_of_one_warning_is_one_line_per_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    repeated = Repeated(logging.getLogger("flood"), interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="flood"):
        for _ in range(18_804):
            repeated.warning("feature store unavailable")
        now[0] += 10
        repeated.warning("feature store unavailable")
        now[0] += 3
        repeated.warning("feature store unavailable")
    assert [r.getMessage() for r in caplog.records] == [
        "feature store unavailable",
        "feature store unavailable (and 18803 more like it in the last 10 s)",
    ]
