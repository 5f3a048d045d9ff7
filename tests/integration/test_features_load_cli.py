"""`mlgate features load` against a real redis-server: exit status 0 only when every row was
written, refusals in one line, event times read as the user meant them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import yaml

from feature_store.redis_store import RedisStore
from feature_store.store import Status, ViewRows
from service.cli import main
from tests.integration.test_feature_loader import VIEW

DAY_S = 86_400


@pytest.fixture(autouse=True)
def no_mlgate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLGATE_FEATURE_STORE", "MLGATE_VIEWS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def views_file(tmp_path: Path) -> Path:
    path = tmp_path / "views.yaml"
    path.write_text(yaml.safe_dump({"views": [VIEW.model_dump(mode="json")]}))
    return path


async def stored(url: str, entity: str) -> ViewRows:
    store = RedisStore(url)
    try:
        [rows] = await store.read([VIEW], [entity])
    finally:
        await store.close()
    return rows


def load(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(["features", "load", *args])
    code = exited.value.code
    assert isinstance(code, int)
    return code


def into(views_file: Path, store_url: str) -> list[str]:
    """The flags of a load into the test's view of `store_url`."""
    return ["--view", "txn_stats", "--views", str(views_file), "--feature-store", store_url]


def csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(text)
    return path


def test_an_unknown_view_fails_in_one_line_with_no_success_line(
    tmp_path: Path, views_file: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = csv(tmp_path, "user_id,txn_count_1h,amount_sum_1h\nu1,1,2\n")
    code = load(
        str(path), "--view", "users", "--views", str(views_file), "--feature-store", redis_url
    )
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    assert err == f"features load: unknown view 'users' in {views_file}; known: txn_stats\n"


def test_a_store_that_dies_with_the_command_is_refused_naming_the_flag(
    tmp_path: Path, views_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = csv(tmp_path, "user_id,txn_count_1h,amount_sum_1h\nu1,1,2\n")
    code = load(str(path), "--view", "txn_stats", "--views", str(views_file))
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    assert err.count("\n") == 1
    assert "memory:// keeps rows only while this command runs" in err
    assert "--feature-store" in err


def test_a_bad_value_is_named_with_file_row_column_and_value_and_fails(
    tmp_path: Path, views_file: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = csv(tmp_path, "user_id,txn_count_1h,amount_sum_1h\nu1,1,2\nu2,3,4\nu3,x7,5\n")
    code = load(str(path), *into(views_file, redis_url))
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == (
        f"features load: {path}: row 3: column 'txn_count_1h': value 'x7': "
        "not float32 as view 'txn_stats' declares\n"
    )


def test_no_progress_bar_is_drawn_when_stderr_is_no_terminal(
    tmp_path: Path, views_file: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = csv(tmp_path, "user_id,txn_count_1h,amount_sum_1h\nu1,1,2\n")
    code = load(str(path), *into(views_file, redis_url))
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "loaded 1 rows into txn_stats\n"
    assert err == ""


async def test_a_conventional_event_time_column_is_used_without_the_flag(
    tmp_path: Path, views_file: Path, redis_url: str
) -> None:
    month_ago_s = int(time.time()) - 30 * DAY_S
    path = csv(tmp_path, f"user_id,txn_count_1h,amount_sum_1h,event_time\nu1,1,2,{month_ago_s}\n")
    args = [str(path), *into(views_file, redis_url)]
    # In a thread: the command runs its own event loop.
    assert await asyncio.to_thread(load, *args) == 0
    rows = await stored(redis_url, "u1")
    assert rows.event_time_ms.tolist() == [month_ago_s * 1000]
    assert rows.status.tolist() == [Status.STALE]


@pytest.mark.parametrize(
    ("cell", "unit"),
    [
        ("1700000000", None),
        ("1700000000.25", None),
        ("1700000000250", None),
        ("1700000000250000", None),
        ("1700000000250000000", None),
        ("2023-11-14T22:13:20.250Z", None),
        ("2023-11-15T00:13:20.250+02:00", None),
        ("1700000000", "s"),
        ("1700000000250", "ms"),
    ],
)
async def test_event_times_in_every_unit_are_read_as_the_same_moment(
    tmp_path: Path,
    views_file: Path,
    redis_url: str,
    cell: str,
    unit: str | None,
) -> None:
    path = csv(tmp_path, f"user_id,txn_count_1h,amount_sum_1h,ts\nu1,1,2,{cell}\n")
    flags = ["--event-time-column", "ts", *(["--event-time-unit", unit] if unit else [])]
    args = [str(path), *into(views_file, redis_url)]
    assert await asyncio.to_thread(load, *args, *flags) == 0
    rows = await stored(redis_url, "u1")
    expected = 1_700_000_000_000 if cell in ("1700000000",) else 1_700_000_000_250
    assert rows.event_time_ms.tolist() == [expected]


@pytest.mark.parametrize(
    ("cell", "unit", "why"),
    [
        ("1700000000", "ms", "outside 2000-01-01 .. a day from now read in ms"),
        ("86400", None, "no plausible epoch time in s, ms, us, ns"),
        (str((int(time.time()) + 7 * DAY_S) * 1000), None, "no plausible epoch time"),
        ("1999-12-31T00:00:00Z", None, "outside 2000-01-01 .. a day from now"),
        ("2024-06-10T12:00:00", None, "an ISO 8601 time with a zone offset"),
    ],
)
def test_implausible_event_times_are_refused_with_their_row_and_nothing_is_written(
    tmp_path: Path,
    views_file: Path,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    cell: str,
    unit: str | None,
    why: str,
) -> None:
    path = csv(tmp_path, f"user_id,txn_count_1h,amount_sum_1h,event_time_ms\nu1,1,2,{cell}\n")
    flags = ["--event-time-unit", unit] if unit else []
    args = [str(path), *into(views_file, redis_url)]
    assert load(*args, *flags) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"features load: {path}: row 1: column 'event_time_ms': value ")
    assert why in err
    with redis.Redis.from_url(redis_url) as admin:
        assert admin.dbsize() == 0


def test_a_later_row_in_another_unit_than_the_first_is_refused(
    tmp_path: Path, views_file: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now_s = int(datetime.now(UTC).timestamp())
    path = csv(
        tmp_path,
        f"user_id,txn_count_1h,amount_sum_1h,event_time\nu1,1,2,{now_s}\nu2,1,2,{now_s * 1000}\n",
    )
    args = [str(path), *into(views_file, redis_url)]
    assert load(*args) == 1
    err = capsys.readouterr().err
    assert f"row 2: column 'event_time': value {now_s * 1000}: outside" in err
    assert err.rstrip().endswith("read in s")
