"""Which policy store a process takes: the feature store's Redis unless one is named, so that
replicas behind a Service share one routing policy with no flag of their own."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.cli import build_parser, settings_from_args
from service.settings import Settings, default_policy_store

REDIS_URLS = [
    "redis://10.0.0.5:6379/2",
    "rediss://:secret@redis.example:6380/0",
    "redis+cluster://10.0.0.5:7000/0",
    "rediss+cluster://redis-cluster.example:7000/0",
]


def serve(*flags: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *flags]))


@pytest.fixture(autouse=True)
def no_mlgate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read MLGATE_*: the tests start from none of them."""
    import os

    for name in [n for n in os.environ if n.startswith("MLGATE_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("url", REDIS_URLS)
def test_a_redis_feature_store_keeps_the_policy_too(url: str) -> None:
    assert default_policy_store(url) == url
    assert serve("--feature-store", url).shared_policy_store == url


def test_a_named_policy_store_wins_over_the_feature_stores_redis() -> None:
    for named in ("memory://", "file:///run/mlgate/policy.json", "redis+cluster://c:7000/0"):
        settings = serve("--feature-store", "redis://r:6379/0", "--policy-store", named)
        assert settings.shared_policy_store == named


def test_a_storeless_demo_shares_no_policy() -> None:
    assert default_policy_store("memory://") is None
    assert serve().shared_policy_store is None


def test_a_cluster_url_is_accepted_for_both_stores_and_a_foreign_one_refused() -> None:
    url = "redis+cluster://127.0.0.1:7000/0"
    settings = serve("--feature-store", url, "--policy-store", url)
    assert (settings.feature_store, settings.policy_store) == (url, url)
    for flag in ("--feature-store", "--policy-store"):
        with pytest.raises(ValidationError, match="redis\\+cluster://host:port/0"):
            serve(flag, "etcd://127.0.0.1:2379")
