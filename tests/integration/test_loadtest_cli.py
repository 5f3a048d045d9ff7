"""`bench` end to end: the CLI, several generator processes, and the gRPC target."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from loadtests import cli
from loadtests.generator import LoadSpec
from loadtests.processes import HOST, trivial_server
from loadtests.runner import Job, execute
from loadtests.workloads import SCENARIOS, Workload


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    with trivial_server("http") as port:
        yield port


def test_processes_merge_their_histograms_into_one_result(http_port: int) -> None:
    job = Job(
        f"http://{HOST}:{http_port}",
        Workload(SCENARIOS["predict-8-zipf"], pool=64),
        LoadSpec(concurrency=4, requests=300, duration_s=20),
    )
    result = execute(job, procs=2)
    assert result.ok == 300
    assert result.latency.count == 300
    assert 0 < result.latency.percentile_us(50) <= result.latency.max_us


def test_bench_run_writes_json_with_the_encoded_histogram(http_port: int, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    argv = ["bench", "run", "--url", f"http://{HOST}:{http_port}", "--scenario", "mix"]
    argv += ["--rate", "400", "--poisson", "--duration", "0.25", "--json", str(out)]
    assert cli.main(argv) == 0
    data = orjson.loads(out.read_bytes())
    assert data["scenario"] == "mix" and data["mode"].startswith("open loop, Poisson")
    assert data["result"]["ok"] == data["result"]["requests"] > 50
    assert data["result"]["latency_hdr"].startswith("HISTF")


def test_bench_run_refuses_a_remote_target_unless_allowed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["bench", "run", "--url", "http://10.255.255.1:8000", "--requests", "1"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


def test_commands_register_on_a_foreign_parser() -> None:
    parser = argparse.ArgumentParser(prog="mlgate")
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["bench", "seed", "--redis", "redis://127.0.0.1:1/0", "--n", "5"])
    assert args.func is cli.cmd_seed and args.n == 5
    args = parser.parse_args(["bench", "run", "--rate", "50", "--poisson"])
    assert args.func is cli.cmd_run
    spec = cli.spec_from_args(args)
    assert spec.rate == 50 and spec.poisson and spec.concurrency is None


def test_grpc_target_drives_model_infer() -> None:
    with trivial_server("grpc") as port:
        job = Job(
            f"grpc://{HOST}:{port}",
            Workload(SCENARIOS["v2-entities-8"], pool=16),
            LoadSpec(concurrency=4, requests=100),
        )
        result = execute(job)
    assert result.ok == 100
    assert result.latency.count == 100
