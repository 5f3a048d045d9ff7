"""A gateway's idle memory (docs/memory.md): what onnxruntime freed while loading the models is
given back, and libraries only CLI commands or Triton versions need are not loaded."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import start_gateway

MIB = 1 << 20
# The demo repository idles at about 275 MiB with the heap trimmed after loading, and at
# 600-650 MiB without (docs/memory.md); the bound leaves room for other allocators and builds.
IDLE_RSS_BOUND = 400 * MIB
# Shared objects of libraries serving does not need: pyarrow (features load), and the Triton
# backend's HTTP client stack (aiohttp, gevent), loaded only for a repository that uses Triton.
NOT_LOADED = ("pyarrow", "aiohttp", "gevent")


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_an_idle_gateway_on_the_demo_repository_stays_small_and_loads_no_cli_libraries(
    tmp_path: Path,
) -> None:
    gw = start_gateway(tmp_path)
    try:
        rss = vm_rss(gw.proc.pid)
        maps = Path(f"/proc/{gw.proc.pid}/maps").read_text()
    finally:
        gw.stop()
    loaded = [name for name in NOT_LOADED if f"/{name}/" in maps or f"/{name}." in maps]
    assert not loaded, f"serving mapped {loaded}"
    assert rss < IDLE_RSS_BOUND, f"idle RSS {rss / MIB:.0f} MiB"
