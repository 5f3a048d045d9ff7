"""Model lifecycle at runtime: hot swaps under load fail nothing; the repository is watched."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from feature_store.open import open_store
from feature_store.synthetic import seed_synthetic
from feature_store.views import load_views
from loadtests.generator import LoadSpec, RunResult
from loadtests.runner import Job, execute
from loadtests.workloads import SCENARIOS, Workload, parse_models
from service.routing.router import VERSION_HEADER
from tests.conftest import MODELS_DIR, GatewayProcess, RedisServer, start_gateway
from tests.integration.routing_support import TOKEN, add_model, admin, predict

ENTITIES = 2000
DB = 5
WATCH_S = 0.1


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reload") / "models"
    add_model(root, "swapped", {"stable": "2", "canary": {"version": "1", "weight": 0.3}})
    add_model(root, "watched", {"stable": "2"})
    return root


@pytest.fixture(scope="module")
def store_url(redis_server: RedisServer) -> str:
    """A Redis feature store: a real round trip between routing and scoring, where a swap can
    catch a request in flight."""
    url = f"redis://127.0.0.1:{redis_server.port}/{DB}"

    async def seed() -> None:
        store = open_store(url)
        try:
            await seed_synthetic(store, load_views(root_views()).values(), ENTITIES)
        finally:
            await store.close()

    asyncio.run(seed())
    return url


def root_views() -> Path:
    return MODELS_DIR / "feature_views.yaml"


@pytest.fixture(scope="module")
def gateway(root: Path, store_url: str) -> Iterator[GatewayProcess]:
    gw = start_gateway(
        root.parent,
        "--models",
        str(root),
        "--feature-store",
        store_url,
        "--watch-models",
        str(WATCH_S),
        env={"MLGATE_ADMIN_TOKEN": TOKEN},
    )
    yield gw
    gw.stop()


def under_load(gw: GatewayProcess, changes: Callable[[], None], seconds: float) -> RunResult:
    """The load generator's result against `swapped` (8 clients) while `changes` runs."""
    scenario = replace(SCENARIOS["predict-8-zipf"], models=parse_models("swapped"))
    workload = Workload(scenario, key_space=ENTITIES, pool=256)
    job = Job(gw.url, workload, LoadSpec(concurrency=8, duration_s=seconds))
    failures: list[BaseException] = []

    def change() -> None:
        time.sleep(0.3)  # under load from the start
        try:
            changes()
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=change)
    worker.start()
    result = execute(job)
    worker.join(timeout=30)
    assert not worker.is_alive(), "the changes outlasted the load"
    if failures:
        raise failures[0]
    return result


def test_hot_swaps_under_load_fail_no_request(gateway: GatewayProcess) -> None:
    def changes() -> None:
        steps = [
            ("POST", "models/swapped/versions/2/reload", None),
            ("POST", "models/swapped/versions/1/reload", None),
            ("PATCH", "models/swapped/routing", {"canary": None}),
            ("POST", "models/swapped/versions/1/unload", None),
            ("POST", "models/swapped/versions/1/load", None),
            ("PATCH", "models/swapped/routing", {"canary": {"version": "1", "weight": 0.6}}),
            ("POST", "models/swapped/promote", None),
            ("POST", "models/swapped/versions/2/reload", None),
            ("POST", "models/swapped/promote", {"version": "2"}),
            *[("POST", "models/swapped/versions/2/reload", None)] * 15,
        ]
        for method, path, body in steps:
            r = admin(gateway, method, path, body)
            assert r.status_code == 200, (path, r.text)
            time.sleep(0.05)

    result = under_load(gateway, changes, seconds=5.0)
    assert result.ok > 200
    assert dict(result.errors) == {}
    policy = admin(gateway, "GET", "models/swapped").json()["policy"]
    assert policy["routing"]["stable"] == "2" and policy["versions"] == {"1": 0, "2": 17}


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_the_repository_watch_loads_reloads_and_unloads_versions(
    gateway: GatewayProcess, root: Path
) -> None:
    def loaded() -> list[str]:
        return list(admin(gateway, "GET", "models/watched").json()["loaded"])

    def answer(version: str) -> float:
        r = predict(gateway, "watched", "u7", headers={VERSION_HEADER: version})
        assert r.status_code == 200, r.text
        return float(r.json()["predictions"][0])

    new = root / "watched" / "4"
    new.mkdir()
    shutil.copy(MODELS_DIR / "fraud_mlp" / "1" / "model.onnx", new / "model.onnx")
    assert wait_for(lambda: loaded() == ["1", "2", "4"])
    assert answer("4") == answer("1")

    shutil.copy(MODELS_DIR / "fraud_mlp" / "2" / "model.onnx", new / "model.onnx")
    assert wait_for(lambda: answer("4") == answer("2"))

    shutil.rmtree(new)
    assert wait_for(lambda: loaded() == ["1", "2"])
    r = predict(gateway, "watched", "u7", headers={VERSION_HEADER: "4"})
    assert r.status_code == 404
    history = admin(gateway, "GET", "models/watched").json()["history"]
    assert [(c["who"], c["what"]) for c in history[-2:]] == [
        ("repository-watch", "load"),
        ("repository-watch", "unload"),
    ]
