"""Two worker processes on a Redis feature store hand their counts to Redis and judge the
merged windows there: the gauges show the shifted feature alone. (That the merge adds every
process's counts exactly is test_drift_merge.py's.)"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from service.monitor.profile import REFERENCE_FILE, read_profile
from tests.conftest import GatewayProcess, RedisServer, seeded_url, start_workers
from tests.integration.drift_support import ENTITIES, SHIFTED, monitored_repo, shift_until_alarmed

DB = 12


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    tmp = tmp_path_factory.mktemp("drift-workers")
    url = seeded_url(redis_server, DB, ENTITIES)
    gw, _ = start_workers(tmp, "--models", str(monitored_repo(tmp)), "--feature-store", url)
    try:
        yield gw, url
    finally:
        gw.stop()


def test_workers_judge_merged_counts_and_alarm_for_the_shifted_feature_only(
    fleet: tuple[GatewayProcess, str],
) -> None:
    gw, url = fleet
    # Requests from several clients at once: one client's sequential connections tend to be
    # accepted by whichever worker answered the last one, so one worker could count them all.
    with ThreadPoolExecutor(4) as clients:
        runs = [clients.submit(shift_until_alarmed, gw, 60, part, 4) for part in range(4)]
        alarms = runs[0].result()
        for run in runs[1:]:
            run.result()
    inputs = {k[2]: v for k, v in alarms.items() if k[:2] == ("fraud_mlp", "2") and k[3] == "input"}
    assert {name for name, v in inputs.items() if v == 1} == {SHIFTED}
    # The counts were handed to Redis: a key per sub-window (an entry per process that counted).
    client = redis.Redis.from_url(url)
    try:
        profile_hash = read_profile(Path("models/fraud_mlp/2") / REFERENCE_FILE).hash
        assert client.keys(f"mlgate:drift:{{fraud_mlp/2/{profile_hash}}}:*")
    finally:
        client.close()
