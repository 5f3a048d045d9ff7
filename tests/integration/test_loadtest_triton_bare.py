"""The suite's bare-server peer against a real tritonserver: wrk over HTTP V2 infer with the
features in the body, with the server's CPU per request."""

from __future__ import annotations

from pathlib import Path

from loadtests.suite import SuiteSettings, measure_bare
from tests.conftest import MODELS_DIR
from tests.triton_support import TritonServer


def test_bare_triton_is_driven_by_wrk_at_every_level_with_its_cpu_per_request(
    triton: TritonServer, tmp_path: Path
) -> None:
    settings = SuiteSettings(
        configs=(),
        scenarios=(),
        concurrency=(1, 8),
        duration_s=1.0,
        repeats=1,
        warmup_s=0.0,
        entities=100,
        models=MODELS_DIR,
        views=MODELS_DIR / "feature_views.yaml",
        results_dir=tmp_path,
        docs=tmp_path / "benchmarks.md",
    )
    points = measure_bare(settings, triton)

    assert [p["concurrency"] for p in points] == [1, 8]
    for point in points:
        assert point["errors"] == {}
        # Answered with 200s: wrk counts an error status apart from the answered requests.
        assert point["requests"] > 50
        assert point["throughput_rps"] > 50
        assert 0 < point["latency_us"]["p50"] <= point["latency_us"]["p99"]
        # tritonserver and pytriton's processes did the work: some CPU time per request.
        assert point["server_cpu_us_per_request"] > 10
        assert "--client wrk" in point["command"]
