"""Reading a file sink back: tail across rotations, follow, export, and the CLI commands."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from service.audit.cli import add_commands, parse_time
from service.audit.reader import export, tail
from service.audit.record import AuditRecord, EncodedRecord
from service.audit.sinks import FileSink
from service.audit.sinks.file import sink_files
from tests.unit.test_audit_record import make_record


async def write(sink: FileSink, records: list[AuditRecord]) -> None:
    for r in records:
        await sink.write([EncodedRecord.of(r)])


async def ids(url: str, **kw: str | int | None) -> list[int]:
    found = [
        r
        async for r in tail(
            url,
            model="fraud_mlp",
            follow=False,
            version=kw.get("version"),  # type: ignore[arg-type]
            route=kw.get("route"),  # type: ignore[arg-type]
            flag=kw.get("flag"),  # type: ignore[arg-type]
            last=kw.get("last"),  # type: ignore[arg-type]
        )
    ]
    return [int(r.request_id[4:]) for r in found]


async def test_tail_reads_rotated_files_oldest_first_with_filters(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(path, rotate_bytes=8_000, keep=10)
    await write(
        sink,
        [
            make_record(i, version=str(i % 3), flags=["clamped"] if i % 4 == 0 else [])
            for i in range(40)
        ]
        + [make_record(40, model="other")],
    )
    await sink.close()
    assert len(sink_files(path)) >= 3
    url = f"file://{path}"
    assert await ids(url) == list(range(40))
    assert await ids(url, version="1") == list(range(1, 40, 3))
    assert await ids(url, flag="clamped", last=2) == [32, 36]


async def test_tail_follow_continues_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(path, rotate_bytes=3_000, keep=10)
    await write(sink, [make_record(0)])
    got: list[str] = []

    async def follow() -> None:
        async for r in tail(f"file://{path}", model="fraud_mlp", follow=True, last=0):
            got.append(r.request_id)
            if len(got) == 12:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await write(sink, [make_record(i) for i in range(1, 13)])
    await asyncio.wait_for(follower, timeout=5)
    await sink.close()
    assert len(sink_files(path)) >= 3, "the sink rotated meanwhile"
    assert got == [f"req-{i:08d}" for i in range(1, 13)]


async def test_export_from_a_file_sink_keeps_the_window_once_per_request_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(path, rotate_bytes=5_000)
    ts = 1_700_000_000_000
    await write(sink, [make_record(i, ts_ms=ts) for i in range(30)] + [make_record(12, ts_ms=ts)])
    await sink.close()
    to = tmp_path / "x.parquet"
    n = await export(f"file://{path}", model="fraud_mlp", since_ms=ts + 10, until_ms=ts + 20, to=to)
    assert n == 10
    assert pq.read_table(to).column("request_id").to_pylist() == [
        f"req-{i:08d}" for i in range(10, 20)
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlgate")
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


async def test_cli_tail_prints_json_lines_and_export_writes_parquet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(path)
    await write(sink, [make_record(i, route="canary" if i % 2 else "primary") for i in range(6)])
    await sink.close()
    url = f"file://{path}"

    args = parser().parse_args(
        ["audit", "tail", "--audit", url, "--model", "fraud_mlp", "--route", "canary", "-n", "2"]
    )
    assert await asyncio.to_thread(args.func, args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["request_id"] for line in lines] == ["req-00000003", "req-00000005"]
    assert lines[0]["route"] == "canary" and len(lines[0]["outputs"]["score"][0]) == 1

    to = tmp_path / "out.parquet"
    args = parser().parse_args(
        ["audit", "export", "--audit", url, "--model", "fraud_mlp", "--to", str(to)]
    )
    assert await asyncio.to_thread(args.func, args) == 0
    assert pq.read_table(to).num_rows == 6


def test_times_parse_as_epoch_ms_iso_or_an_age() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20+00:00") == 1_700_000_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time("yesterday")


def run_cli(*argv: str) -> int:
    args = parser().parse_args(["audit", *argv])
    code = args.func(args)
    assert isinstance(code, int)
    return code


@pytest.mark.parametrize("route", ["override", "blue", "primary"])
async def test_tail_route_takes_every_route_a_record_can_carry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], route: str
) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(path)
    routes = ["primary", "override", "blue", "canary"]
    await write(sink, [make_record(i, route=routes[i % 4]) for i in range(8)])
    await sink.close()
    argv = ["tail", "--audit", f"file://{path}", "--model", "fraud_mlp", "--route", route]
    assert await asyncio.to_thread(run_cli, *argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["route"] for line in lines] == [route, route]


def test_tail_route_refuses_what_is_no_route(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["audit", "tail", "--model", "m", "--route", "Blue Arm"])
    assert "'Blue Arm' is no route" in capsys.readouterr().err


async def test_export_writes_features_statuses_and_tensors_as_columns(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileSink(path)
    record = make_record(3, rows=2)
    values, _ = record.features["user_profile"]
    record.features["user_profile"] = (values, np.array([0, 2], np.uint8))
    await write(sink, [record])
    await sink.close()
    to = tmp_path / "x.parquet"
    assert (
        await export(f"file://{path}", model="fraud_mlp", since_ms=None, until_ms=None, to=to) == 1
    )
    row = pq.read_table(to).to_pylist()[0]
    assert "record" not in row
    features = dict(row["features"])
    assert features["user_profile"] == values.astype(np.float64).tolist()
    assert dict(row["feature_status"]) == {
        "txn_stats": ["fresh", "fresh"],
        "user_profile": ["fresh", "missing"],
    }
    assert (
        dict(row["inputs"])["input"] == record.inputs["input"].astype(np.float64).ravel().tolist()
    )
    assert row["entity_ids"] == ["user:3", "user:4"]


async def test_a_file_export_resumes_where_the_last_of_its_group_stopped(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    url = f"file://{path}"
    # Small files: the second batch rotates the one the first export stopped in.
    sink = FileSink(path, rotate_bytes=20_000)

    async def run(name: str, group: str = "export") -> list[int]:
        to = tmp_path / name
        await export(url, model="fraud_mlp", since_ms=None, until_ms=None, to=to, group=group)
        return [int(i[4:]) for i in pq.read_table(to).column("request_id").to_pylist()]

    await write(sink, [make_record(i) for i in range(10)])
    assert await run("1.parquet") == list(range(10))
    await write(sink, [make_record(i) for i in range(10, 40)])
    assert len(sink_files(path)) > 1
    assert await run("2.parquet") == list(range(10, 40))
    assert await run("3.parquet") == []
    assert await run("4.parquet", group="history") == list(range(40))
    await sink.close()


@pytest.mark.parametrize(
    ("audit", "model", "why"),
    [
        ("audit.log", "fraud_mlpp", "no audit record of model 'fraud_mlpp'"),
        ("missing.log", "fraud_mlp", "no audit file"),
    ],
)
async def test_export_and_tail_of_an_unknown_model_or_a_missing_file_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], audit: str, model: str, why: str
) -> None:
    sink = FileSink(tmp_path / "audit.log")
    await write(sink, [make_record(i) for i in range(3)])
    await sink.close()
    to = tmp_path / "out.parquet"
    argv = ["--audit", f"file://{tmp_path / audit}", "--model", model]
    assert await asyncio.to_thread(run_cli, "export", *argv, "--to", str(to)) == 1
    assert await asyncio.to_thread(run_cli, "tail", *argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"audit export: {tmp_path / audit}: {why}",
        f"audit tail: {tmp_path / audit}: {why}",
    ]
    assert not to.exists() and not to.with_name("out.parquet.tmp").exists()
