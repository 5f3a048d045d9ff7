"""`mlgate serve` flags and MLGATE_* variables -> Settings: the batching and read options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cli import build_parser, setting_names, settings_error, settings_from_args
from service.cpus import usable_cpus
from service.settings import Settings


def serve(*flags: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *flags]))


@pytest.fixture(autouse=True)
def no_mlgate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read MLGATE_*: the tests start from none of them."""
    for name in [n for n in os.environ if n.startswith("MLGATE_")]:
        monkeypatch.delenv(name)


def test_without_a_delay_each_model_keeps_its_own_batching() -> None:
    settings = serve()
    assert settings.batching is True
    assert settings.batching_delay_us is None


def test_batching_delay_flag_sets_a_fixed_delay() -> None:
    assert serve("--batching-delay-us", "2000").batching_delay_us == 2000
    assert serve("--batching-delay-us", "0").batching_delay_us == 0


def test_batching_delay_comes_from_the_environment_and_the_flag_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLGATE_BATCHING_DELAY_US", "500")
    assert serve().batching_delay_us == 500
    assert serve("--batching-delay-us", "750").batching_delay_us == 750


@pytest.mark.parametrize("value", ["-1", "1000001"])
def test_batching_delay_out_of_range_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        serve("--batching-delay-us", value)
    message = settings_error(
        caught.value, setting_names(build_parser().parse_args(["serve"]).options)
    )
    assert message.startswith("--batching-delay-us (MLGATE_BATCHING_DELAY_US): ")
    assert "than or equal to" in message


def test_batching_delay_with_batching_off_is_refused_naming_both() -> None:
    with pytest.raises(ValidationError) as caught:
        serve("--batching", "off", "--batching-delay-us", "500")
    message = settings_error(caught.value)
    assert "batching_delay_us" in message and "batching is off" in message


def test_batching_off_in_the_environment_conflicts_with_a_delay_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLGATE_BATCHING", "off")
    assert serve().batching is False
    with pytest.raises(ValidationError):
        serve("--batching-delay-us", "500")


def test_a_delay_that_is_not_a_number_stops_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve("--batching-delay-us", "2ms")
    assert "--batching-delay-us" in capsys.readouterr().err


def test_serve_exits_2_with_the_message_on_a_conflict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["serve", "--batching", "off", "--batching-delay-us", "1"])
    assert args.func(args) == 2
    assert "batching is off" in capsys.readouterr().err


def test_worker_processes_read_back_the_delay_that_serve_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from service.cli import export_settings

    monkeypatch.setattr(os, "environ", dict(os.environ))
    export_settings(serve("--batching-delay-us", "2000"))
    assert os.environ["MLGATE_BATCHING_DELAY_US"] == "2000"
    assert Settings().batching_delay_us == 2000


def test_reads_are_coalesced_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert serve().coalesce_reads is True
    assert serve("--coalesce-reads", "off").coalesce_reads is False
    monkeypatch.setenv("MLGATE_COALESCE_READS", "off")
    assert serve().coalesce_reads is False
    assert serve("--coalesce-reads", "on").coalesce_reads is True


def test_workers_auto_is_one_per_usable_cpu_with_redis_features() -> None:
    settings = serve("--feature-store", "redis://127.0.0.1:6379/0")
    assert settings.workers == "auto"
    assert settings.worker_count == min(usable_cpus(), 64)


def test_workers_auto_is_one_with_the_in_process_memory_store() -> None:
    # Features pushed to one process would be invisible to the others.
    assert serve().worker_count == 1
    assert serve("--policy-store", "file:///tmp/policy.json").worker_count == 1


def test_a_worker_count_given_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    assert serve("--workers", "3").worker_count == 3
    monkeypatch.setenv("MLGATE_WORKERS", "2")
    assert serve("--feature-store", "redis://127.0.0.1:6379/0").worker_count == 2


@pytest.mark.parametrize("given", ["0", "65", "many"])
def test_a_worker_count_out_of_range_or_not_a_number_names_the_field(given: str) -> None:
    with pytest.raises(ValidationError) as caught:
        serve("--workers", given)
    assert settings_error(caught.value) == (
        f"MLGATE_WORKERS: {given!r}: expected a number of processes from 1 to 64, or auto"
    )


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), (None, None)],
)
def test_usable_cpus_honour_a_cgroup_quota(
    tmp_path: Path, cpu_max: str | None, expected: int | None
) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    mask = len(os.sched_getaffinity(0))
    assert usable_cpus(path) == (mask if expected is None else min(mask, expected))
