"""The in-process floor: the least any server could do per request, measured on this machine.

One Redis round trip for a packed row of each demo view (the store's own ``read``), one
onnxruntime run on that row, one orjson encode of a predict-shaped answer: no HTTP, no
thread hop, no batching. Every suite figure is read as a multiple of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop

from loadtests.histogram import LatencyHistogram
from loadtests.report import ms

_WARMUP = 200
PARTS = ("redis_read", "onnx_run", "encode", "total")


def measure_floor(
    redis_url: str, views_path: Path, model_path: Path, samples: int, key_space: int = 100_000
) -> dict[str, dict[str, float]]:
    """p50/p90/p99/... in microseconds of each part and of the whole, over ``samples`` rounds."""
    return uvloop.run(_measure(redis_url, views_path, model_path, samples, key_space))


async def _measure(
    redis_url: str, views_path: Path, model_path: Path, samples: int, key_space: int
) -> dict[str, dict[str, float]]:
    import onnxruntime as ort

    from feature_store.open import open_store
    from feature_store.views import load_views

    views = list(load_views(views_path).values())
    store = open_store(redis_url)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    entities = np.random.default_rng(0).integers(0, key_space, size=_WARMUP + samples)
    histograms = {part: LatencyHistogram() for part in PARTS}
    clock = time.perf_counter_ns
    try:
        for i, entity in enumerate(entities.tolist()):
            start = clock()
            rows = await store.read(views, [f"u{entity}"])
            fetched = clock()
            features = np.concatenate([r.values for r in rows], axis=1).astype(np.float32)
            (probability, *_) = session.run(None, {input_name: features})
            inferred = clock()
            orjson.dumps(_answer(probability, rows), option=orjson.OPT_SERIALIZE_NUMPY)
            done = clock()
            if i >= _WARMUP:
                for part, took in zip(
                    PARTS,
                    (fetched - start, inferred - fetched, done - inferred, done - start),
                    strict=True,
                ):
                    histograms[part].record_us(took // 1000)
    finally:
        await store.close()
    return {part: h.summary_us() for part, h in histograms.items()}


def _answer(probability: Any, rows: list[Any]) -> dict[str, Any]:
    return {
        "model": "fraud_mlp",
        "model_version": "2",
        "request_id": "floor",
        "predictions": probability.reshape(-1),
        "feature_status": {r.view.name: r.counts() for r in rows},
    }


def format_floor(floor: dict[str, dict[str, float]]) -> str:
    lines = [f"  {'floor, ms':<12}{'p50':>9}{'p99':>9}{'p99.9':>9}"]
    for part in PARTS:
        s = floor[part]
        lines.append(f"  {part:<12}{ms(s['p50']):>9}{ms(s['p99']):>9}{ms(s['p999']):>9}")
    return "\n".join(lines)
