"""Replay: re-score logged predictions on another version and compare, to gate a promotion.

Every audit record holds the exact tensors its prediction was scored on, the online features
included as they were fetched then, so a replay needs no feature store and sees no feature
drift: a difference is the model's. The candidate scores in-process (onnxruntime, from the
model repository) or through a running gateway (V2 HTTP with binary tensors; that gateway's
own output guard applies to what it answers). The baseline is what was logged, or, for a
record logged from another version than `baseline`, that version re-scored the same way.
The output guard runs on both sides, for the change in flag rate.

`mlgate replay` (replay.cli) drives it.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
import orjson
from tqdm import tqdm

from service.audit.reader import AuditSourceError, tail
from service.audit.record import AuditRecord
from service.audit.sinks import DEFAULT_AUDIT_URL
from service.backends.onnx import OnnxBackend
from service.guard import Guard
from service.monitor.feedback import FEEDBACK_ROUTE
from service.protocol.datatypes import v2_datatype
from service.protocol.errors import GatewayError
from service.protocol.json_codec import (
    HEADER_LENGTH,
    tensor_bytes,
    tensor_from_bytes,
    tensor_from_json,
)
from service.repository.config import CONFIG_FILE, MODEL_FILE, ConfigError, ModelConfig, read_config

# Rows listed in the report's table of the largest differences.
WORST_ROWS = 10
# Re-scoring errors quoted in the summary.
QUOTED_ERRORS = 3


class ReplayError(Exception):
    """The replay cannot run as asked (a version or output that does not exist, no records)."""


@dataclass(frozen=True)
class ReplayOptions:
    model: str
    candidate: str
    baseline: str | None = None
    audit: str = DEFAULT_AUDIT_URL
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None
    route: str | None = None
    url: str | None = None
    models: Path = Path("models")
    output: str | None = None
    tolerance: float = 0.01
    max_beyond: float = 0.0
    threshold: float = 0.5
    max_disagreement: float | None = None
    # None: a progress bar only on a terminal.
    progress: bool | None = None


@dataclass(frozen=True)
class Worst:
    request_id: str
    row: int
    baseline: list[float]
    candidate: list[float]
    abs_diff: float

    def cells(self) -> dict[str, str]:
        return {
            "request id": self.request_id,
            "row": str(self.row),
            "baseline": _values(self.baseline),
            "candidate": _values(self.candidate),
            "|difference|": f"{self.abs_diff:.6g}",
        }


def _values(values: list[float]) -> str:
    shown = ", ".join(f"{v:.6g}" for v in values[:4])
    return shown + (", …" if len(values) > 4 else "")


@dataclass
class ReplayResult:
    options: ReplayOptions
    output: str
    records: int = 0
    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    logged_versions: list[str] = field(default_factory=list)
    # One value per element of the compared output: candidate - baseline.
    diffs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    beyond_tolerance: float = 0.0
    agreement: float = 1.0
    disagreement: float = 0.0
    baseline_flag_rate: float = 0.0
    candidate_flag_rate: float = 0.0
    # Seconds per re-scored record, by the version scored.
    latency_s: dict[str, list[float]] = field(default_factory=dict)
    logged_infer_us: list[int] = field(default_factory=list)
    worst: list[Worst] = field(default_factory=list)

    @property
    def baseline_label(self) -> str:
        logged = f"logged predictions (version {', '.join(self.logged_versions) or '-'})"
        baseline = self.options.baseline
        if baseline is None:
            return logged
        if self.logged_versions == [baseline]:
            return f"version {baseline}, as logged"
        return f"version {baseline} (logged where the record is of it, re-scored otherwise)"

    def failures(self) -> list[str]:
        """The gates that do not hold; [] when the candidate may be promoted."""
        o = self.options
        failed = []
        if self.errors:
            failed.append(f"{len(self.errors)} records could not be re-scored")
        if self.beyond_tolerance > o.max_beyond:
            failed.append(
                f"{self.beyond_tolerance:.2%} of rows differ by more than {o.tolerance:g} "
                f"(limit {o.max_beyond:.2%})"
            )
        if o.max_disagreement is not None and self.disagreement > o.max_disagreement:
            failed.append(
                f"{self.disagreement:.2%} of rows change class at {o.threshold:g} "
                f"(limit {o.max_disagreement:.2%})"
            )
        return failed


class Scorer(Protocol):
    async def prepare(self, version: str) -> None:
        """ReplayError unless `version` can be scored."""

    async def score(self, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The version's outputs for `inputs`; GatewayError or httpx.HTTPError on failure."""

    async def close(self) -> None: ...


class LocalScorer:
    """The model's versions in this process, with onnxruntime, as the gateway loads them."""

    def __init__(self, models: Path, model: str, config: ModelConfig) -> None:
        self._directory = models / model
        self._config = config
        self._executor = ThreadPoolExecutor(1, "replay")
        self._backends: dict[str, OnnxBackend] = {}

    async def prepare(self, version: str) -> None:
        path = self._directory / version / MODEL_FILE
        if not path.is_file():
            raise ReplayError(
                f"{path}: no such model file; to score a version served elsewhere (Triton), "
                "replay through a gateway with --url"
            )
        try:
            self._backends[version] = OnnxBackend(path, self._config.onnxruntime, self._executor)
        except GatewayError as exc:
            raise ReplayError(exc.message) from None

    async def score(self, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self._backends[version].infer(inputs)

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._executor.shutdown(wait=False)


class HttpScorer:
    """A running gateway's V2 HTTP endpoint, tensors in binary both ways."""

    def __init__(self, url: str, model: str) -> None:
        self._client = httpx.AsyncClient(base_url=url, timeout=30.0)
        self._model = model

    async def prepare(self, version: str) -> None:
        try:
            reply = await self._client.get(f"/v2/models/{self._model}/versions/{version}/ready")
        except httpx.HTTPError as exc:
            raise ReplayError(f"{self._client.base_url}: {exc}") from None
        if reply.status_code != 200:
            raise ReplayError(f"{self._client.base_url}: {_error_text(reply)}")

    async def score(self, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs = [tensor_bytes(a) for a in inputs.values()]
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "datatype": v2_datatype(a.dtype),
                        "shape": list(a.shape),
                        "parameters": {"binary_data_size": len(blob)},
                    }
                    for (name, a), blob in zip(inputs.items(), blobs, strict=True)
                ],
                "parameters": {"binary_data_output": True},
            }
        )
        reply = await self._client.post(
            f"/v2/models/{self._model}/versions/{version}/infer",
            content=header + b"".join(blobs),
            headers={HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"},
        )
        if reply.status_code != 200:
            raise GatewayError(f"HTTP {reply.status_code}: {_error_text(reply)}")
        return _decode_response(reply)

    async def close(self) -> None:
        await self._client.aclose()


def _error_text(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["error"])
    except (ValueError, KeyError, TypeError):
        return reply.text[:200]


def _decode_response(reply: httpx.Response) -> dict[str, np.ndarray]:
    body = reply.content
    size = reply.headers.get(HEADER_LENGTH)
    json_size = int(size) if size is not None else len(body)
    doc = orjson.loads(body[:json_size])
    offset = json_size
    outputs = {}
    for out in doc["outputs"]:
        name, datatype, shape = out["name"], out["datatype"], tuple(out["shape"])
        blob_size = (out.get("parameters") or {}).get("binary_data_size")
        if blob_size is None:
            outputs[name] = tensor_from_json(name, datatype, shape, out["data"])
        else:
            blob = body[offset : offset + blob_size]
            outputs[name] = tensor_from_bytes(name, datatype, shape, blob)
            offset += blob_size
    return outputs


async def read_records(o: ReplayOptions) -> list[AuditRecord]:
    """The model's records to replay, oldest first."""
    kept: deque[AuditRecord] = deque(maxlen=o.limit)
    try:
        async for r in tail(o.audit, model=o.model, follow=False, route=o.route):
            # Labels are no traffic; shadow copies only when asked for.
            if r.route == FEEDBACK_ROUTE or (o.route is None and r.route == "shadow"):
                continue
            if (o.since_ms is None or r.ts_ms >= o.since_ms) and (
                o.until_ms is None or r.ts_ms < o.until_ms
            ):
                kept.append(r)
    except AuditSourceError as exc:
        raise ReplayError(f"no audit records of model {o.model!r}: {exc}") from None
    return list(kept)


@dataclass
class _Rows:
    """The compared output of the records replayed so far, one (rows, width) array each."""

    baseline: list[np.ndarray] = field(default_factory=list)
    candidate: list[np.ndarray] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    baseline_flagged: int = 0
    candidate_flagged: int = 0


class _Replay:
    def __init__(self, o: ReplayOptions, config: ModelConfig, scorer: Scorer) -> None:
        self.o = o
        self.config = config
        self.scorer = scorer
        self.batched = config.max_batch_size > 0
        self.output = o.output or config.outputs[0].name
        if self.output not in {spec.name for spec in config.outputs}:
            raise ReplayError(
                f"model '{o.model}' has no output '{self.output}'; "
                f"outputs: {', '.join(spec.name for spec in config.outputs)}"
            )
        self.result = ReplayResult(o, self.output)
        self.rows = _Rows()
        self.guards: dict[str, Guard] = {}

    def guard(self, version: str) -> Guard:
        # Contracts are the model's; the version only labels the guard's metrics.
        if version not in self.guards:
            self.guards[version] = Guard(self.config, self.o.model, version)
        return self.guards[version]

    async def timed(self, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = await self.scorer.score(version, inputs)
        self.result.latency_s.setdefault(version, []).append(time.perf_counter() - started)
        return outputs

    async def one(self, r: AuditRecord) -> None:
        o, result = self.o, self.result
        if self.output not in r.outputs:
            result.skipped += 1
            return
        try:
            if o.baseline is None or o.baseline == r.version:
                baseline, baseline_version = r.outputs, r.version
                if r.version not in result.logged_versions:
                    result.logged_versions.append(r.version)
            else:
                baseline, baseline_version = await self.timed(o.baseline, r.inputs), o.baseline
            candidate = await self.timed(o.candidate, r.inputs)
            base, cand = self.flat(baseline), self.flat(candidate)
            if base.shape != cand.shape:
                raise GatewayError(
                    f"output '{self.output}' has shape {list(candidate[self.output].shape)}, "
                    f"the baseline's {list(baseline[self.output].shape)}"
                )
        except (GatewayError, httpx.HTTPError) as exc:
            message = exc.message if isinstance(exc, GatewayError) else str(exc)
            result.errors.append(f"{r.request_id}: {message}")
            return
        self.rows.baseline.append(base)
        self.rows.candidate.append(cand)
        self.rows.request_ids += [r.request_id] * len(base)
        self.rows.baseline_flagged += len(self.guard(baseline_version).check(baseline).row_flags)
        self.rows.candidate_flagged += len(self.guard(o.candidate).check(candidate).row_flags)
        result.records += 1
        if "infer" in r.latency_us:
            result.logged_infer_us.append(r.latency_us["infer"])

    def flat(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        a = outputs[self.output]
        rows = a.shape[0] if self.batched and a.ndim else 1
        return a.reshape(rows, a.size // rows if rows else 0).astype(np.float64)

    def summarise(self) -> ReplayResult:
        result, rows = self.result, self.rows
        if not rows.baseline:
            return result
        base = np.concatenate(rows.baseline)
        cand = np.concatenate(rows.candidate)
        diffs = cand - base
        # A NaN on either side is as far off as it gets.
        gaps = np.where(np.isnan(diffs), np.inf, np.abs(diffs))
        row_gaps = gaps.max(axis=1, initial=0.0)
        threshold = self.o.threshold
        agree = ((base >= threshold) == (cand >= threshold)).all(axis=1)
        n = len(base)
        result.rows = n
        result.diffs = diffs.ravel()
        result.max_abs_diff = float(gaps.max(initial=0.0))
        result.mean_abs_diff = float(gaps.mean()) if gaps.size else 0.0
        result.beyond_tolerance = float(np.count_nonzero(row_gaps > self.o.tolerance)) / n
        agreeing = int(np.count_nonzero(agree))
        # Both from counts: a gate set at exactly the observed share must hold.
        result.agreement, result.disagreement = agreeing / n, (n - agreeing) / n
        result.baseline_flag_rate = rows.baseline_flagged / n
        result.candidate_flag_rate = rows.candidate_flagged / n
        starts = np.cumsum([0] + [len(b) for b in rows.baseline])
        for i in np.argsort(-row_gaps, kind="stable")[:WORST_ROWS].tolist():
            record = int(np.searchsorted(starts, i, side="right")) - 1
            result.worst.append(
                Worst(
                    request_id=rows.request_ids[i],
                    row=i - int(starts[record]),
                    baseline=base[i].tolist(),
                    candidate=cand[i].tolist(),
                    abs_diff=float(row_gaps[i]),
                )
            )
        return result


async def replay(o: ReplayOptions) -> ReplayResult:
    """Re-score the selected records on the candidate (and a re-scored baseline) and compare."""
    config_path = o.models / o.model / CONFIG_FILE
    try:
        config = read_config(config_path)
    except ConfigError as exc:
        raise ReplayError(str(exc)) from None
    except FileNotFoundError:
        raise ReplayError(f"{config_path}: no such file; is --models the repository?") from None
    records = await read_records(o)
    if not records:
        raise ReplayError(f"no audit records of model '{o.model}' to replay in {o.audit}")
    versions = list(dict.fromkeys([o.candidate] + ([o.baseline] if o.baseline else [])))
    scorer: Scorer = (
        LocalScorer(o.models, o.model, config) if o.url is None else HttpScorer(o.url, o.model)
    )
    try:
        for version in versions:
            await scorer.prepare(version)
        run = _Replay(o, config, scorer)
        with tqdm(
            total=len(records),
            unit="rec",
            desc=f"replay {o.model} v{o.candidate}",
            disable=None if o.progress is None else not o.progress,
            file=sys.stderr,
        ) as bar:
            for r in records:
                await run.one(r)
                bar.update()
        return run.summarise()
    finally:
        await scorer.close()


def latency_ms(seconds: Sequence[float]) -> str:
    if not seconds:
        return "-"
    p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99]).tolist()
    return f"p50 {p50:.3f} ms, p99 {p99:.3f} ms ({len(seconds)} calls)"


def summary_rows(r: ReplayResult) -> list[tuple[str, str]]:
    """The findings as (what, value) lines, for the terminal and the HTML report alike."""
    o = r.options
    rows = [
        ("model", o.model),
        ("candidate", f"version {o.candidate}" + (f" via {o.url}" if o.url else " in-process")),
        ("baseline", r.baseline_label),
        ("output", r.output),
        ("audit log", o.audit),
        (
            "compared",
            f"{r.records} records, {r.rows} rows "
            f"({r.skipped} skipped: no '{r.output}' logged; {len(r.errors)} failed)",
        ),
        ("max |difference|", f"{r.max_abs_diff:.6g}"),
        ("mean |difference|", f"{r.mean_abs_diff:.6g}"),
        (
            f"rows beyond {o.tolerance:g}",
            f"{r.beyond_tolerance:.2%} (limit {o.max_beyond:.2%})",
        ),
        (
            f"class agreement at {o.threshold:g}",
            f"{r.agreement:.2%}"
            + (f" (limit {1 - o.max_disagreement:.2%})" if o.max_disagreement is not None else ""),
        ),
        (
            "flag rate",
            f"{r.baseline_flag_rate:.2%} -> {r.candidate_flag_rate:.2%} "
            f"({(r.candidate_flag_rate - r.baseline_flag_rate) * 100:+.2f} points)",
        ),
    ]
    rows += [(f"re-scoring v{v}", latency_ms(s)) for v, s in r.latency_s.items()]
    if r.logged_infer_us:
        rows.append(("logged infer", latency_ms([us / 1e6 for us in r.logged_infer_us])))
    rows += [("error", e) for e in r.errors[:QUOTED_ERRORS]]
    return rows
