"""`mlgate replay` on audit records of real fraud_mlp version 1 scores of the demo population:
in-process and through a gateway, from a file sink and a Redis stream."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from feature_store.synthetic import synthetic_rows
from feature_store.views import load_views
from replay.run import ReplayError, ReplayOptions, ReplayResult, replay
from service.audit import AuditLog, AuditRecord
from service.audit.sinks import FileSink, RedisStreamSink
from service.audit.sinks.base import Sink
from service.cli import main
from tests.conftest import MODELS_DIR, GatewayProcess, start_gateway

T0 = 1_700_000_000_000
RECORDS = 60
# The contract's max in the test repository: the demo population scores on both sides of it.
TIGHT_MAX = 0.3


def score(version: str, features: np.ndarray) -> np.ndarray:
    """fraud_mlp's score straight from onnxruntime, as the expected side of every check."""
    session = ort.InferenceSession(
        str(MODELS_DIR / "fraud_mlp" / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scores: np.ndarray = session.run(None, {"features": features})[0]
    return scores


@dataclass
class Logged:
    records: list[AuditRecord]
    features: np.ndarray  # every primary record's rows, in order
    v1: np.ndarray
    v2: np.ndarray
    url: str
    models: Path


def make_records() -> tuple[list[AuditRecord], np.ndarray]:
    """RECORDS primary records of 1 to 4 users scored on version 1, and 3 shadow copies on 2."""
    views = load_views(MODELS_DIR / "feature_views.yaml")
    sizes = [1 + i % 4 for i in range(RECORDS)]
    txn = synthetic_rows(views["txn_stats"], sum(sizes), seed=0)[1]
    profile = synthetic_rows(views["user_profile"], sum(sizes), seed=0)[1]
    features = np.concatenate([txn, profile], axis=1)
    scores = score("1", features)
    records = []
    start = 0
    for i, n in enumerate(sizes):
        rows = slice(start, start + n)
        records.append(
            AuditRecord(
                request_id=f"req-{i:03d}",
                ts_ms=T0 + i * 1000,
                model="fraud_mlp",
                version="1",
                route="primary",
                entity_ids=[f"u{j}" for j in range(start, start + n)],
                features={
                    "txn_stats": (txn[rows], np.zeros(n, np.uint8)),
                    "user_profile": (profile[rows], np.zeros(n, np.uint8)),
                },
                inputs={"features": features[rows]},
                outputs={"probability": scores[rows]},
                flags=[],
                latency_us={"features": 200, "infer": 90, "total": 320},
            )
        )
        start += n
    for i in range(3):
        shadow = records[i]
        records.append(
            AuditRecord(
                request_id=f"shadow-{i}",
                ts_ms=shadow.ts_ms + 1,
                model="fraud_mlp",
                version="2",
                route="shadow",
                entity_ids=shadow.entity_ids,
                features=shadow.features,
                inputs=shadow.inputs,
                outputs={"probability": score("2", shadow.inputs["features"])},
                flags=[],
                latency_us={},
                paired_with=shadow.request_id,
            )
        )
    return records, features


async def write(sink: Sink, records: list[AuditRecord]) -> None:
    log = AuditLog(sink, spill_path=None)
    await log.start()
    for r in records:
        log.submit(r)
    await log.close()
    assert log.stats["written"] == len(records)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    root = tmp_path_factory.mktemp("replay")
    models = root / "models"
    shutil.copytree(MODELS_DIR / "fraud_mlp", models / "fraud_mlp")
    shutil.copy(MODELS_DIR / "feature_views.yaml", models)
    config = models / "fraud_mlp" / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["outputs"][0]["valid_range"]["max"] = TIGHT_MAX
    # Flag only: a gateway that clamped or replaced scores would not answer what onnxruntime does.
    data["guard"] = {"policy": "flag"}
    config.write_text(yaml.safe_dump(data))

    records, features = make_records()
    path = root / "audit.log"
    asyncio.run(write(FileSink(path), records))
    return Logged(
        records, features, score("1", features), score("2", features), f"file://{path}", models
    )


def options(logged: Logged, candidate: str, **kw: object) -> ReplayOptions:
    return ReplayOptions(
        model="fraud_mlp",
        candidate=candidate,
        audit=logged.url,
        models=logged.models,
        progress=False,
        **kw,  # type: ignore[arg-type]
    )


def run_cli(logged: Logged, *args: str) -> int:
    base = ["replay", "--model", "fraud_mlp", "--audit", logged.url, "--models"]
    with pytest.raises(SystemExit) as exited:
        main([*base, str(logged.models), *args])
    assert isinstance(exited.value.code, int)
    return exited.value.code


# ---- in-process ---------------------------------------------------------------------


async def test_version_1_against_its_own_log_finds_no_difference(logged: Logged) -> None:
    result = await replay(options(logged, "1"))
    assert (result.records, result.rows, result.skipped, result.errors) == (60, 150, 0, [])
    assert result.max_abs_diff == result.mean_abs_diff == result.beyond_tolerance == 0.0
    assert result.agreement == 1.0
    assert result.baseline_flag_rate == result.candidate_flag_rate
    assert len(result.latency_s["1"]) == 60
    assert result.failures() == []


def test_the_cli_passes_a_self_replay(logged: Logged, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(logged, "--candidate", "1") == 0
    out = capsys.readouterr().out
    assert re.search(r"^max \|difference\| +0$", out, re.MULTILINE)
    assert "FAIL" not in out


async def test_version_2_against_the_logged_version_1_reports_the_real_difference(
    logged: Logged,
) -> None:
    result = await replay(options(logged, "2", tolerance=0.05, threshold=0.3))
    gaps = np.abs(logged.v2.astype(np.float64) - logged.v1)
    assert gaps.max() > 0.05
    assert result.rows == 150
    assert result.max_abs_diff == pytest.approx(gaps.max())
    assert result.mean_abs_diff == pytest.approx(gaps.mean())
    assert result.beyond_tolerance == pytest.approx(np.mean(gaps > 0.05))
    agree = (logged.v1 >= 0.3) == (logged.v2 >= 0.3)
    assert result.agreement == pytest.approx(agree.mean())
    assert result.baseline_flag_rate == pytest.approx(np.mean(logged.v1 > TIGHT_MAX))
    assert result.candidate_flag_rate == pytest.approx(np.mean(logged.v2 > TIGHT_MAX))
    assert result.baseline_flag_rate != result.candidate_flag_rate
    worst = result.worst[0]
    assert worst.abs_diff == pytest.approx(gaps.max())
    row = int(np.argmax(gaps))
    assert worst.candidate == pytest.approx([float(logged.v2[row, 0])])


def test_the_cli_fails_past_a_tight_tolerance_and_writes_the_report(
    logged: Logged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "out" / "replay.html"
    code = run_cli(logged, "--candidate", "2", "--tolerance", "0.001", "--report", str(report))
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL: " in out and "differ by more than 0.001" in out
    html = report.read_text()
    assert '<p class="verdict fail">FAIL</p>' in html
    assert "req-" in html, "the largest differences name their requests"
    image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert image is not None
    assert base64.b64decode(image[1]).startswith(b"\x89PNG\r\n\x1a\n")


def test_the_cli_passes_within_a_loose_tolerance_and_gates_on_disagreement(
    logged: Logged,
) -> None:
    assert run_cli(logged, "--candidate", "2", "--tolerance", "1") == 0
    disagreeing = float(np.mean((logged.v1 >= 0.3) != (logged.v2 >= 0.3)))
    assert 0 < disagreeing < 0.5
    loose = ["--candidate", "2", "--tolerance", "1", "--threshold", "0.3"]
    assert run_cli(logged, *loose, "--max-disagreement", f"{disagreeing / 2}") == 1
    assert run_cli(logged, *loose, "--max-disagreement", f"{disagreeing}") == 0


async def test_a_baseline_of_another_version_is_rescored(logged: Logged) -> None:
    same = await replay(options(logged, "2", baseline="2"))
    assert same.max_abs_diff == 0.0
    assert len(same.latency_s["2"]) == 2 * 60
    logged_1 = await replay(options(logged, "2", baseline="1"))
    assert logged_1.max_abs_diff == pytest.approx(np.abs(logged.v2 - logged.v1).max())
    assert list(logged_1.latency_s) == ["2"], "version 1 is as logged, not re-scored"


async def test_window_limit_and_route_select_the_records(logged: Logged) -> None:
    since, until = T0 + 10_000, T0 + 20_000
    window = await replay(options(logged, "1", since_ms=since, until_ms=until))
    assert window.records == 10
    newest = await replay(options(logged, "1", limit=5))
    assert (newest.records, newest.rows) == (5, 4 + 1 + 2 + 3 + 4)
    assert {w.request_id for w in newest.worst} <= {f"req-{i:03d}" for i in range(55, 60)}
    shadows = await replay(options(logged, "2", route="shadow"))
    assert (shadows.records, shadows.max_abs_diff) == (3, 0.0)


async def test_a_version_without_a_model_file_cannot_be_replayed(logged: Logged) -> None:
    with pytest.raises(ReplayError, match=r"fraud_mlp/7/model.onnx: no such model file"):
        await replay(options(logged, "7"))


def test_the_cli_exits_2_when_there_is_nothing_to_replay(
    logged: Logged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = f"file://{tmp_path / 'none.log'}"
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--model", "fraud_mlp", "--candidate", "2", "--audit", empty])
    assert exited.value.code == 2
    assert "no audit records of model 'fraud_mlp'" in capsys.readouterr().err


def test_a_report_without_matplotlib_names_the_extra_before_replaying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import matplotlib` fail as on an install without the extra.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report = tmp_path / "replay.html"
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--model", "fraud_mlp", "--candidate", "2", "--report", str(report)])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "replay: --report draws with matplotlib, which is not installed: "
        "pip install 'mlgate[bench]'\n"
    )
    assert not report.exists()


# ---- from Redis, and through a gateway ----------------------------------------------


def same_findings(a: ReplayResult, b: ReplayResult) -> None:
    assert (a.records, a.rows) == (b.records, b.rows)
    np.testing.assert_array_equal(a.diffs, b.diffs)
    assert (a.agreement, a.candidate_flag_rate) == (b.agreement, b.candidate_flag_rate)


async def test_replay_reads_a_redis_stream(logged: Logged, redis_url: str) -> None:
    await write(RedisStreamSink.from_url(redis_url), logged.records)
    from_redis = await replay(
        ReplayOptions(
            model="fraud_mlp", candidate="2", audit=redis_url, models=logged.models, progress=False
        )
    )
    same_findings(from_redis, await replay(options(logged, "2")))


@pytest.fixture(scope="module")
def gateway(logged: Logged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = start_gateway(
        tmp_path_factory.mktemp("gateway"),
        "--models",
        str(logged.models),
        "--demo-entities",
        "0",
        env={"MLGATE_AUDIT": "none"},
    )
    yield proc
    proc.stop()


async def test_url_mode_scores_through_a_gateway_as_in_process(
    logged: Logged, gateway: GatewayProcess
) -> None:
    remote = await replay(options(logged, "2", baseline="1", url=gateway.url))
    same_findings(remote, await replay(options(logged, "2")))
    assert remote.max_abs_diff > 0
    assert len(remote.latency_s["2"]) == 60


async def test_url_mode_names_a_version_the_gateway_lacks(
    logged: Logged, gateway: GatewayProcess
) -> None:
    with pytest.raises(ReplayError, match=f"{gateway.url}.*no version '7'"):
        await replay(options(logged, "7", url=gateway.url))
