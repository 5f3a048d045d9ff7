"""How many CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""

from __future__ import annotations

import math
import os
from pathlib import Path

# A container's quota (Kubernetes `limits.cpu`) lives here; the affinity mask does not show it.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return cpus  # no cgroup v2 limit readable: the mask is all there is
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))
