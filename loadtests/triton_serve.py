"""Serve the demo ONNX model from a real tritonserver, through pytriton.

Runs in the Triton venv (`make triton-venv`), never in mlgate's: pytriton pins its own numpy.
loadtests/triton.py starts it for the benchmark suite and the Triton backend's tests.
Prints READY on stdout once every model is loaded, then serves until killed.

Models, both with fraud_mlp's signature (features FP32 [-1, 32] -> probability FP32 [-1, 1]):
  fraud_mlp        version 2: models/fraud_mlp/2/model.onnx run by onnxruntime
  fraud_mlp_faulty version 1: sleeps features[0, 0] seconds, then fails the batch when that is
                   negative and answers as fraud_mlp otherwise; one model rather than a slow and a
                   broken one because each model costs tritonserver seconds of start-up
"""

from __future__ import annotations

import argparse
import os
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MAX_BATCH_SIZE = 64
FAULTY_MESSAGE = "the faulty model fails batches whose first feature is negative"

InferFunc = Callable[..., dict[str, np.ndarray[Any, Any]]]


def onnx_model(path: Path, faulty: bool = False) -> InferFunc:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    @batch  # type: ignore[untyped-decorator]
    def infer(features: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        if faulty:
            delay_s = float(features[0, 0])
            time.sleep(abs(delay_s))
            if delay_s < 0:
                raise ValueError(FAULTY_MESSAGE)
        (probability,) = session.run(["probability"], {"features": features})
        return {"probability": probability}

    return infer  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="fraud_mlp's model.onnx")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--only-fraud-mlp", action="store_true", help="skip the faulty model")
    args = parser.parse_args()

    # The Python-backend stub links libpython3.11.so.1.0; found in the system's LIBDIR it runs
    # against this interpreter's stdlib and fails ("'_thread.RLock' object has no attribute
    # '_recursion_count'"). tritonserver inherits this environment, so this interpreter's own
    # libpython comes first.
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")])
    )

    models: list[tuple[str, int, InferFunc]] = [("fraud_mlp", 2, onnx_model(args.model))]
    if not args.only_fraud_mlp:
        models.append(("fraud_mlp_faulty", 1, onnx_model(args.model, faulty=True)))
    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        allow_metrics=False,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        for name, version, infer in models:
            triton.bind(
                model_name=name,
                model_version=version,
                infer_func=infer,
                inputs=[Tensor(name="features", dtype=np.float32, shape=(32,))],
                outputs=[Tensor(name="probability", dtype=np.float32, shape=(1,))],
                config=ModelConfig(max_batch_size=MAX_BATCH_SIZE),
            )
        triton.connect()
        print("READY", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
