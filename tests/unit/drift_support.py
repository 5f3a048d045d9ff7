"""A reference of independent standard normal features, and windows drawn from it."""

from __future__ import annotations

import math

import numpy as np

from service.monitor.config import MonitoringConfig
from service.monitor.drift import VersionDrift
from service.monitor.profile import Column, Profile, build_profile

FEATURES = 8
REFERENCE_ROWS = 20_000


def columns(features: int = FEATURES) -> list[Column]:
    return [Column(f"x{i}", "input", "x", i) for i in range(features)]


def normal_profile(seed: int = 0, features: int = FEATURES, rows: int = REFERENCE_ROWS) -> Profile:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((rows, features))
    values = {f"x{i}": data[:, i] for i in range(features)}
    return build_profile("m", "1", columns(features), values)


def drift_of(profile: Profile, **config: object) -> VersionDrift:
    return VersionDrift("m", "1", profile, MonitoringConfig.model_validate(config))


def population_proportions(profile: Profile) -> list[np.ndarray]:
    """Per column, the share of the standard normal population in each of its bins."""
    found = []
    for c in profile.columns:
        assert c.edges is not None
        cdf = np.array([0.5 * (1 + math.erf(e / math.sqrt(2))) for e in c.edges])
        found.append(np.concatenate([[cdf[0]], np.diff(cdf), [1 - cdf[-1]], [0.0]]))
    return found
