"""A run as a table for people; machines get ``RunResult.to_dict`` as JSON."""

from __future__ import annotations

from loadtests.generator import LoadSpec, RunResult


def ms(value_us: float) -> str:
    return f"{value_us / 1000:.3f}"


def mib(value_bytes: int | None) -> str:
    return "-" if value_bytes is None else f"{value_bytes / 2**20:.1f}"


def format_run(title: str, spec: LoadSpec, result: RunResult, procs: int = 1) -> str:
    latency = result.latency.summary_us()
    lines = [
        f"{title} · {spec.mode} · {spec.duration_s:g} s bound · {procs} process(es)",
        f"  {'requests':>9} {'ok':>9} {'errors':>7} {'elapsed s':>10} {'req/s':>10}",
        f"  {result.completed:>9} {result.ok:>9} {sum(result.errors.values()):>7}"
        f" {result.elapsed_s:>10.2f} {result.throughput_rps:>10.1f}",
        f"  {'latency ms':<11}" + "".join(f"{k:>9}" for k in ("p50", "p90", "p99", "p99.9", "max")),
        f"  {'':<11}"
        + "".join(f"{ms(latency[k]):>9}" for k in ("p50", "p90", "p99", "p999", "max")),
    ]
    if result.errors:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(result.errors.items()))
        lines.append(f"  errors: {kinds}")
    for kind, histogram in sorted(result.error_latency.items()):
        figures = histogram.summary_us()
        lines.append(
            f"  {kind} answered in ms: p50 {ms(figures['p50'])}  p99 {ms(figures['p99'])}"
            f"  max {ms(figures['max'])}"
        )
    if spec.rate is not None:
        lag = result.send_lag.summary_us()
        lines.append(
            f"  generator send lag ms: p50 {ms(lag['p50'])}  p99 {ms(lag['p99'])}"
            f"  max {ms(lag['max'])}  (large: the generator, not the server, is the limit)"
        )
    return "\n".join(lines)
