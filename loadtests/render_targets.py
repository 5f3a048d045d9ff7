"""The page's targets section: mlgate as `mlgate serve` comes against the bare V2 inference
server, and each throughput, tail, floor and CPU target marked met or missed, by how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadtests.report import ms

# The configurations the targets are measured on (loadtests/configs.py): `mlgate serve` as it
# comes, entity predict over HTTP driven by wrk, and entity ids over V2 gRPC.
HTTP_CONFIG = "default-wrk"
GRPC_CONFIG = "default-grpc"
LEVELS = (8, 64)
# The targets: c=64 throughput at least this many times the bare server's; p99 at most this
# many times p50; c=1 p50 at most this many times the floor's; CPU µs per request at c=64.
THROUGHPUT_VS_BARE = 2.0
TAIL_RATIO = 3.0
FLOOR_RATIO = 3.0
CPU_US = {HTTP_CONFIG: 150.0, GRPC_CONFIG: 250.0}


@dataclass(frozen=True)
class Target:
    what: str
    value: float | None
    limit: float
    at_least: bool
    """True: the value must reach the limit; False: stay at or under it."""
    unit: str = "x"
    digits: int = 2

    def row(self) -> str:
        sign = "≥" if self.at_least else "≤"
        if self.value is None:
            return f"| {self.what} | {sign} {self.limit:g}{self.unit} | - | not measured |"
        met = self.value >= self.limit if self.at_least else self.value <= self.limit
        # How far from the limit, as a share of it: what is still to win, or the margin.
        gap = abs(self.value - self.limit) / self.limit
        verdict = f"met ({gap:.0%} margin)" if met else f"**missed** by {gap:.0%}"
        return (
            f"| {self.what} | {sign} {self.limit:g}{self.unit}"
            f" | {self.value:.{self.digits}f}{self.unit} | {verdict} |"
        )


def targets_section(results: dict[str, Any]) -> list[str]:
    """Nothing where the run measured neither default-wrk nor default-grpc."""
    by_level = {
        name: {r["concurrency"]: r for r in results["runs"] if r["config"] == name}
        for name in (HTTP_CONFIG, GRPC_CONFIG)
    }
    if not any(by_level.values()):
        return []
    http = by_level[HTTP_CONFIG]
    bare = {p["concurrency"]: p for p in results.get("triton", {}).get("bare", [])}
    lines = [
        "",
        "## Targets: mlgate as it comes against a bare V2 inference server",
        "",
        f"mlgate `{HTTP_CONFIG}`: entity predict with Redis features, guard and audit on, under"
        " the default `mlgate serve` settings, driven by wrk. *Bare*: the tritonserver of the"
        " Triton section (dynamic batching on, pytriton's default) serving the same model.onnx,"
        " driven by the same wrk with one FP32 feature row per V2 infer in the JSON body"
        " (`v2-dense-1`); its CPU per request is that of tritonserver's whole process tree."
        " Same runs, repeats and machine; the generator's ceiling is in its section above.",
        "",
        "| c | mlgate req/s | bare req/s | ratio | mlgate p50 ms | bare p50 ms | mlgate p99 ms"
        " | bare p99 ms | mlgate p99/p50 | bare p99/p50 | mlgate CPU µs/req | bare CPU µs/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in LEVELS:
        ours, theirs = http.get(level), bare.get(level)
        ratio = _ratio(_rate(ours), _rate(theirs))
        lines.append(
            f"| {level} | {_cell(_rate(ours), '.0f')} | {_cell(_rate(theirs), '.0f')}"
            f" | {_cell(ratio, '.2f')} | {_latency(ours, 'p50')} | {_latency(theirs, 'p50')}"
            f" | {_latency(ours, 'p99')} | {_latency(theirs, 'p99')}"
            f" | {_cell(_tail(ours), '.1f')} | {_cell(_tail(theirs), '.1f')}"
            f" | {_cell(_cpu(ours), '.0f')} | {_cell(_cpu(theirs), '.0f')} |"
        )
    floor_p50 = results["floor"]["parts_us"]["total"]["p50"]
    single = http.get(1)
    single_p50 = single["latency_us"]["p50"] if single else None
    floor_ratio = _ratio(single_p50, floor_p50)
    lines += [
        "",
        f"In-process floor p50 {ms(floor_p50)} ms; mlgate `{HTTP_CONFIG}` c=1 p50 "
        + (
            "not measured."
            if single_p50 is None
            else f"{ms(single_p50)} ms: {_cell(floor_ratio, '.2f')}x."
        ),
        "",
        "| target | limit | measured | verdict |",
        "|---|---:|---:|---|",
    ]
    targets = [
        Target(
            "c=64 throughput, mlgate over bare",
            _ratio(_rate(http.get(64)), _rate(bare.get(64))),
            THROUGHPUT_VS_BARE,
            at_least=True,
        )
    ]
    for name, protocol in ((HTTP_CONFIG, "HTTP"), (GRPC_CONFIG, "gRPC")):
        targets += [
            Target(
                f"p99/p50 at c={level}, {protocol}",
                _tail(by_level[name].get(level)),
                TAIL_RATIO,
                at_least=False,
            )
            for level in LEVELS
        ]
    targets.append(Target("c=1 p50 over the floor's p50", floor_ratio, FLOOR_RATIO, at_least=False))
    targets += [
        Target(
            f"CPU per request at c=64, {protocol}",
            _cpu(by_level[name].get(64)),
            CPU_US[name],
            at_least=False,
            unit=" µs",
            digits=0,
        )
        for name, protocol in ((HTTP_CONFIG, "HTTP"), (GRPC_CONFIG, "gRPC"))
    ]
    return lines + [t.row() for t in targets]


def _rate(run: dict[str, Any] | None) -> float | None:
    return None if run is None else float(run["throughput_rps"])


def _tail(run: dict[str, Any] | None) -> float | None:
    if run is None or not run["latency_us"]["p50"]:
        return None
    return float(run["latency_us"]["p99"] / run["latency_us"]["p50"])


def _cpu(run: dict[str, Any] | None) -> float | None:
    return None if run is None else run.get("server_cpu_us_per_request")


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _latency(run: dict[str, Any] | None, key: str) -> str:
    return "-" if run is None else ms(run["latency_us"][key])
