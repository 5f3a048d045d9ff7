"""What drift counting costs per row and feature: `python -m loadtests.drift_cost`.

Counts batches of the demo population into fraud_mlp version 2's reference bins (32 features
and one output, as the gateway does after each scored batch) and prints, per batch size, the
time per batch and per row per column. A micro-benchmark on this machine: the gateway-level
overhead is `mlgate bench` with the monitoring-off config.
"""

from __future__ import annotations

import argparse
import timeit
from pathlib import Path

import numpy as np

from models.build import INPUT_NAME, OUTPUT_NAME, VIEWS_FILE, Standardisation
from service.monitor.config import MonitoringConfig
from service.monitor.drift import VersionDrift
from service.monitor.profile import REFERENCE_FILE, read_profile

PROFILE = Path(__file__).resolve().parent.parent / "models" / "fraud_mlp" / "2" / REFERENCE_FILE
BATCH_SIZES = (1, 8, 32, 64, 256)


def measure(batch: int, seconds: float) -> tuple[float, int]:
    """Seconds per counted batch of `batch` rows, the best of ten runs (the least disturbed by
    whatever else the machine runs); and the columns counted."""
    profile = read_profile(PROFILE)
    drift = VersionDrift("fraud_mlp", "2", profile, MonitoringConfig())
    rows = Standardisation.fit(VIEWS_FILE).rows
    tensors = {INPUT_NAME: rows[:batch], OUTPUT_NAME: np.full((batch, 1), 0.1, np.float32)}
    once = min(timeit.repeat(lambda: drift.count(tensors, now=0.0), number=1, repeat=5))
    number = max(1, int(seconds / 10 / once))
    runs = timeit.repeat(lambda: drift.count(tensors, now=0.0), number=number, repeat=10)
    return min(runs) / number, len(profile.columns)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.drift_cost", description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="per batch size")
    args = parser.parse_args(argv)
    print("rows/batch  µs/batch  ns/row/column")
    for batch in BATCH_SIZES:
        per_batch, columns = measure(batch, args.seconds)
        print(f"{batch:10d}  {per_batch * 1e6:8.1f}  {per_batch * 1e9 / batch / columns:13.1f}")


if __name__ == "__main__":
    main()
