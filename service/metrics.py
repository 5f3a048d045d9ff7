"""Every Prometheus metric of the gateway, with its labels, in one place.

Labels are bounded: model, version, endpoint, route, outcome, reason, view, status.
Never an entity id or a request id.

With several worker processes (`mlgate serve --workers N`) the CLI sets
PROMETHEUS_MULTIPROC_DIR before anything imports this module, and `/metrics`
aggregates every process's values.
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Gauge, Histogram

# prometheus-client exposes no names for labelled children; they are instances of the parent.
CounterChild = Counter
HistogramChild = Histogram

# 100 µs .. 1 s, roughly x2.5 per step.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "mlgate_requests_total",
    "Requests handled, by model, version, endpoint and outcome (ok, an error class, or"
    " cancelled: the client went away before its answer).",
    ["model", "version", "endpoint", "outcome"],
)
REQUEST_LATENCY = Histogram(
    "mlgate_request_duration_seconds",
    "Time from request decoded to response encoded.",
    ["model", "version", "endpoint", "outcome"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_LATENCY = Histogram(
    "mlgate_inference_duration_seconds",
    "Time the backend spent on one batch.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
FEATURE_FETCH_LATENCY = Histogram(
    "mlgate_feature_fetch_duration_seconds",
    "Time of one online-store lookup (all views and entities of a request: one round trip).",
    ["store"],
    buckets=LATENCY_BUCKETS,
)
FEATURE_STORE_ROUND_TRIPS = Counter(
    "mlgate_feature_store_round_trips_total",
    "Round trips to the online store's servers for feature reads and writes: one per server a "
    "read or write touches (per node on a Redis Cluster); divide by requests for trips per "
    "request.",
    ["store"],
)
FEATURE_ROWS = Counter(
    "mlgate_feature_rows_total",
    "Feature rows served, by view and status (fresh, stale, missing, defaulted).",
    ["view", "status"],
)

# Dynamic batching.
BATCH_SIZE = Histogram(
    "mlgate_batch_size",
    "Rows per executed batch.",
    ["model", "version"],
    buckets=BATCH_SIZE_BUCKETS,
)
# What the HorizontalPodAutoscaler scales on (deploy/): load per pod, whether requests wait in
# a batcher, on the feature store, on Triton or for the event loop.
INFLIGHT = Gauge(
    "mlgate_inflight_requests",
    "Inference requests (HTTP infer and predict, gRPC ModelInfer and each ModelStreamInfer"
    " request) being handled, from the route's start to its answer; summed over workers.",
    ["endpoint"],
    multiprocess_mode="livesum",
)
QUEUE_DEPTH = Gauge(
    "mlgate_queue_depth",
    "Requests waiting in the batcher's queue.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "mlgate_queue_wait_seconds",
    "Time a request waited in the queue before its batch started.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
EVENT_LOOP_LAG = Histogram(
    "mlgate_event_loop_lag_seconds",
    "How late the event loop ran a timer due every 0.1 s: time every request waited for the"
    " loop to get to it (a long synchronous step, garbage collection, a busy machine).",
    buckets=LATENCY_BUCKETS,
)
QUEUE_REJECTED = Counter(
    "mlgate_queue_rejected_total",
    "Requests refused because the queue was full (429).",
    ["model", "version"],
)
QUEUE_EXPIRED = Counter(
    "mlgate_queue_expired_total",
    "Requests whose deadline passed while queued (504); never run.",
    ["model", "version"],
)
BATCH_RELEASES = Counter(
    "mlgate_batch_releases_total",
    "Why each batch left the queue: full, preferred, delay, deadline, idle.",
    ["model", "version", "reason"],
)

# Prediction guardrails.
GUARD_EVENTS = Counter(
    "mlgate_guard_events_total",
    "Predictions flagged, clamped, rejected or replaced, by reason.",
    ["model", "version", "action", "reason"],
)
GUARD_FLAG_RATE = Gauge(
    "mlgate_guard_flag_rate",
    "Share of recent predictions that broke their output contract (rolling window).",
    ["model", "version"],
    multiprocess_mode="livemax",
)

# Audit log.
AUDIT_RECORDS = Counter(
    "mlgate_audit_records_total",
    "Audit records by outcome: queued, written, spilled, drained, dropped.",
    ["outcome"],
)
AUDIT_QUEUE_BYTES = Gauge(
    "mlgate_audit_queue_bytes",
    "Bytes held in the in-process audit queue.",
    multiprocess_mode="livesum",
)
AUDIT_LAG = Gauge(
    "mlgate_audit_lag_seconds",
    "Age of the oldest record not yet written to the sink.",
    multiprocess_mode="livemax",
)


# Routing: canary, A/B arms, shadows and overrides (route: primary, canary, shadow, override or
# an arm's name from config.yaml). Comparisons pair a shadow version with the primary's version
# (baseline); both are versions, so bounded.
ROUTED = Counter(
    "mlgate_routed_total",
    "Predictions by the version and route that served them; outcome ok, flagged or error.",
    ["model", "version", "route", "outcome"],
)
ROUTED_LATENCY = Histogram(
    "mlgate_routed_duration_seconds",
    "Time from features to guarded outputs of one prediction, by route (shadows included).",
    ["model", "version", "route"],
    buckets=LATENCY_BUCKETS,
)
SHADOW_DROPPED = Counter(
    "mlgate_shadow_dropped_total",
    "Shadow copies dropped because the shadow queue was full.",
    ["model", "version"],
)
SHADOW_QUEUE_DEPTH = Gauge(
    "mlgate_shadow_queue_depth",
    "Shadow copies waiting for a shadow worker.",
    multiprocess_mode="livesum",
)
SHADOW_AGREEMENT = Counter(
    "mlgate_shadow_rows_total",
    "Rows scored by a shadow version and compared with the primary answer; outcome agree or "
    "disagree (any output further apart than the model's agreement_tolerance).",
    ["model", "baseline", "version", "outcome"],
)
SHADOW_ABS_DIFF = Histogram(
    "mlgate_shadow_abs_diff",
    "Per row, the largest absolute difference between a shadow output and the primary's.",
    ["model", "baseline", "version"],
    buckets=(0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
# Counted by the `--workers N` supervisor process into the workers' shared metrics directory.
WORKER_RESTARTS = Counter(
    "mlgate_worker_restarts_total",
    "Worker processes that died (or hung) after starting and were replaced.",
)
CANARY_WEIGHT = Gauge(
    "mlgate_canary_weight",
    "The share of traffic routed to the canary version (0 after a rollback).",
    ["model", "version"],
    multiprocess_mode="livemax",
)
ROLLBACKS = Counter(
    "mlgate_rollbacks_total",
    "Canaries taken out of traffic by guarded rollout, by the threshold crossed "
    "(error_rate, flag_rate, p99_ratio, disagreement, quality).",
    ["model", "version", "reason"],
)
POLICY_CHANGES = Counter(
    "mlgate_policy_changes_total",
    "Routing policy and model lifecycle changes made by this process, by action.",
    ["model", "action"],
)
# Label feedback (service.monitor.feedback): labels by whether they found their prediction.
FEEDBACK_LABELS = Counter(
    "mlgate_feedback_labels_total",
    "True labels received, by outcome: joined (to the recorded prediction), unmatched (no "
    "prediction found: unknown request id, or none near the entity and time) or invalid.",
    ["model", "version", "outcome"],
)
MODEL_QUALITY = Gauge(
    "mlgate_model_quality",
    "Realised quality of a version over its labels in the quality window (config.yaml "
    "quality.window_s), every process's labels summed; metric accuracy, auc or mae.",
    ["model", "version", "metric"],
    multiprocess_mode="livemax",
)
MODEL_QUALITY_WINDOW_LABELS = Gauge(
    "mlgate_model_quality_window_labels",
    "Labels joined to a version's predictions in the quality window.",
    ["model", "version"],
    multiprocess_mode="livemax",
)
MODEL_LIFECYCLE = Counter(
    "mlgate_model_lifecycle_total",
    "Model versions loaded, reloaded and unloaded at runtime; outcome ok or failed.",
    ["model", "version", "action", "outcome"],
)

# Drift (service.monitor): per version with a reference profile, each judged window's statistic
# against the reference, per input feature and output (kind: input or output). With Redis,
# every process judges the same merged counts, so the processes' values agree and livemax
# reports them; without it, each process judges its own traffic and livemax reports the most
# drifted process's values.
DRIFT_SCORE = Gauge(
    "mlgate_drift_score",
    "The last judged window's drift statistic (PSI or binned KS, per config.yaml) of a feature"
    " or output against its version's reference profile.",
    ["model", "version", "feature", "kind"],
    multiprocess_mode="livemax",
)
DRIFT_THRESHOLD = Gauge(
    "mlgate_drift_threshold",
    "The statistic's threshold at the window's size: its null distribution's quantile at the"
    " level alpha / (features and outputs tested).",
    ["model", "version", "feature", "kind"],
    multiprocess_mode="livemax",
)
DRIFT_ALARM = Gauge(
    "mlgate_drift_alarm",
    "1 when the last judged window's score exceeded its threshold, else 0.",
    ["model", "version", "feature", "kind"],
    multiprocess_mode="livemax",
)
DRIFT_WINDOW_ROWS = Gauge(
    "mlgate_drift_window_rows",
    "Rows in the last judged window.",
    ["model", "version"],
    multiprocess_mode="livemax",
)
DRIFT_REFERENCE_INFO = Gauge(
    "mlgate_drift_reference_info",
    "1 for the reference profile (by content hash) a monitored version is judged against.",
    ["model", "version", "hash"],
    multiprocess_mode="livemax",
)


# Looking up a labelled child costs a few microseconds; the request path asks for the same
# few label sets over and over, so it goes through these caches.
@lru_cache(maxsize=4096)
def request_children(
    model: str, version: str, endpoint: str, outcome: str
) -> tuple[CounterChild, HistogramChild]:
    labels = (model, version, endpoint, outcome)
    return REQUESTS.labels(*labels), REQUEST_LATENCY.labels(*labels)


@lru_cache(maxsize=16)
def in_flight(endpoint: str) -> Gauge:
    return INFLIGHT.labels(endpoint)


@lru_cache(maxsize=1024)
def inference_latency(model: str, version: str) -> HistogramChild:
    return INFERENCE_LATENCY.labels(model, version)


@lru_cache(maxsize=64)
def feature_fetch_latency(store: str) -> HistogramChild:
    return FEATURE_FETCH_LATENCY.labels(store)


@lru_cache(maxsize=64)
def feature_store_round_trips(store: str) -> CounterChild:
    return FEATURE_STORE_ROUND_TRIPS.labels(store)


@lru_cache(maxsize=1024)
def feature_rows(view: str, status: str) -> CounterChild:
    return FEATURE_ROWS.labels(view, status)


@lru_cache(maxsize=1024)
def routed(model: str, version: str, route: str, outcome: str) -> CounterChild:
    return ROUTED.labels(model, version, route, outcome)


@lru_cache(maxsize=1024)
def routed_latency(model: str, version: str, route: str) -> HistogramChild:
    return ROUTED_LATENCY.labels(model, version, route)


@lru_cache(maxsize=256)
def shadow_dropped(model: str, version: str) -> CounterChild:
    return SHADOW_DROPPED.labels(model, version)
