"""Real tritonserver processes for the Triton backend's tests: loadtests.triton's, skipped (failed
under `make test`) where its venv is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loadtests import triton
from loadtests.triton import TritonServer
from tests.conftest import MODELS_DIR

__all__ = ["FAULTY_MESSAGE", "MAX_BATCH_SIZE", "TritonServer", "start_triton"]

# As loadtests/triton_serve.py has them.
MAX_BATCH_SIZE = 64
FAULTY_MESSAGE = "the faulty model fails batches whose first feature is negative"


def start_triton(tmp_dir: Path, *, only_fraud_mlp: bool = False) -> TritonServer:
    """A server of models/fraud_mlp/2 (and, unless only_fraud_mlp, the faulty model); skips the
    test where there is no Triton venv, outside `make test`. wait_ready() before using it."""
    if triton.triton_python() is None:
        if os.environ.get("MLGATE_REQUIRE_TRITON"):
            pytest.fail(triton.MISSING_VENV)
        pytest.skip(triton.MISSING_VENV)
    model = MODELS_DIR / "fraud_mlp" / "2" / "model.onnx"
    return triton.start_triton(model, tmp_dir, only_fraud_mlp=only_fraud_mlp)
