"""Process settings: `mlgate serve` flags and MLGATE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cpus import usable_cpus

MAX_WORKERS = 64
# A fixed batching delay beyond this is surely a unit mistake (milliseconds for microseconds).
MAX_BATCHING_DELAY_US = 1_000_000

# Redis, one node or a Cluster (`redis+cluster://host:port/0`: any one node, the client finds
# the others), with TLS or without.
REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")


def default_policy_store(feature_store: str) -> str | None:
    """The policy store a process takes when none is named: the feature store's Redis, so that
    every replica behind a Service holds one routing policy with no flag of its own; None for
    a store-less (memory://) demo, which keeps its policy to itself."""
    return feature_store if feature_store.startswith(REDIS_SCHEMES) else None


class Settings(BaseSettings):
    """Every setting of a gateway process; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="MLGATE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # The gRPC front (Open Inference Protocol) listens here when set; same host as HTTP.
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    # Processes; "auto": one per usable CPU when features and policy live in Redis (every
    # process sees the same ones), else 1 (`worker_count`).
    workers: int | Literal["auto"] = "auto"
    models: Path = Path("models")
    # Feature view declarations; default: <models>/feature_views.yaml.
    views: Path | None = None
    feature_store: str = "memory://"
    # Entities u0..u{N-1} seeded into the in-process store so the demo answers at once.
    demo_entities: int = Field(default=10_000, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    max_body_bytes: int = Field(default=16 << 20, ge=1024)
    # Per request, refused (413 / RESOURCE_EXHAUSTED) before any feature is read: entity ids,
    # and tensor elements over all inputs.
    max_entities: int = Field(default=4096, ge=1)
    max_tensor_elements: int = Field(default=16 << 20, ge=1)
    # Longest request id (body `request_id`, `x-request-id`, V2 `id`); longer ones get a 400.
    max_request_id_length: int = Field(default=128, ge=1, le=4096)
    # Largest gRPC message received or sent; a bigger one is refused with RESOURCE_EXHAUSTED.
    grpc_max_message_bytes: int = Field(default=16 << 20, ge=1024)
    # Dynamic batching for models whose config.yaml has a dynamic_batching section;
    # off serves every request alone (for comparisons).
    batching: bool = True
    # One fixed delay for every batching model, in place of config.yaml's: adaptive off,
    # max_queue_delay_us this. For comparing the adaptive rule with fixed delays; unset: each
    # model's own dynamic_batching section.
    batching_delay_us: int | None = Field(default=None, ge=0, le=MAX_BATCHING_DELAY_US)
    # Concurrent requests' feature reads share one store round trip (one MGET); off: one per
    # request (for comparisons).
    coalesce_reads: bool = True
    # Drift monitoring of the versions with a reference profile (config.yaml `monitoring:`);
    # off: no row is counted anywhere (for comparisons).
    monitoring: bool = True
    # Threads that run model sessions off the event loop.
    inference_threads: int = Field(default=4, ge=1)
    # Where every prediction is recorded: file://PATH, redis://host:port/db[?maxlen=N],
    # redis+cluster://host:port/0[?shards=N&maxlen=N] (any one node of a Redis Cluster; each
    # model's stream sharded over N hash-tagged streams, default 8) or none.
    audit: str = "file://.mlgate/audit.log"
    # Spill files for audit records the sink could not take (drained back when it returns).
    audit_spill_dir: Path = Path(".mlgate/spill")
    # Where every process finds the routing policies and rollout counts: memory:// (this process
    # only), file:///path.json (processes of one host), redis://host:port/db or
    # redis+cluster://host:port/0. Unset: the feature store's Redis when it is one (replicas and
    # workers share it with no flag), else memory://, or with several workers a policy file in a
    # temporary directory. See `shared_policy_store`.
    policy_store: str | None = None
    # Bearer tokens (service/tokens.py): MLGATE_ADMIN_TOKEN, an admin token, and a file of
    # tokens, one a line, `name:token:scope,scope` (inference, features:write, admin), or
    # `name:token` / a bare token, both admin. Without any, the admin API refuses every call
    # and the feature push is open to all.
    admin_token: str | None = Field(default=None, repr=False)
    admin_token_file: Path | None = None
    # Inference (V2 infer, :predict, gRPC ModelInfer/ModelStreamInfer) asks for a token of
    # the inference scope; off: inference is open to all, whatever tokens are configured.
    require_inference_token: bool = False
    # A YAML file of {model: routing section} that takes the place of config.yaml's sections
    # (rollout policy kept apart from the model repository).
    routing: Path | None = None
    # Poll the model repository this often for versions added, removed or changed; 0: no watch.
    watch_models_s: float = Field(default=0.0, ge=0.0)
    # On SIGTERM, readiness fails at once and the process serves on this long before it stops
    # accepting, so load balancers notice first (service/drain.py).
    drain_delay_s: float = Field(default=5.0, ge=0.0, le=300.0)
    # Shadow copies waiting beyond this many are dropped (and counted).
    shadow_queue_size: int = Field(default=1024, ge=1)
    # Shadow copies scored at once; below inference_threads, so primaries always find a thread.
    shadow_concurrency: int = Field(default=2, ge=1)

    @field_validator("workers", mode="before")
    @classmethod
    def _worker_count(cls, value: object) -> object:
        if value == "auto":
            return value
        expected = f"{value!r}: expected a number of processes from 1 to {MAX_WORKERS}, or auto"
        try:
            count = int(str(value))
        except ValueError:
            raise ValueError(expected) from None
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(expected)
        return count

    @field_validator("feature_store")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("memory://", *REDIS_SCHEMES)):
            raise ValueError(
                f"{url!r}: expected memory://, redis://host:port/db, rediss://… "
                "or redis+cluster://host:port/0"
            )
        return url

    @field_validator("policy_store")
    @classmethod
    def _known_store(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("memory://", "file://", *REDIS_SCHEMES)):
            raise ValueError(
                f"{url!r}: expected memory://, file:///path.json, redis://host:port/db "
                "or redis+cluster://host:port/0"
            )
        return url

    @model_validator(mode="after")
    def _delay_needs_batching(self) -> Self:
        if self.batching_delay_us is not None and not self.batching:
            raise ValueError(
                "batching_delay_us fixes how long batches wait, but batching is off; "
                "drop one of the two"
            )
        return self

    @model_validator(mode="after")
    def _inference_tokens_need_a_file(self) -> Self:
        # MLGATE_ADMIN_TOKEN is admin only: inference tokens can come from the file alone.
        if self.require_inference_token and self.admin_token_file is None:
            raise ValueError(
                "require_inference_token needs admin_token_file with a token of the "
                "inference scope (a line name:token:inference)"
            )
        return self

    @property
    def shared_policy_store(self) -> str | None:
        """The policy store every process of the fleet shares: policy_store when given, else
        the feature store's Redis; None when neither names one."""
        if self.policy_store is not None:
            return self.policy_store
        return default_policy_store(self.feature_store)

    @property
    def worker_count(self) -> int:
        """`workers`, with "auto" resolved: the usable CPUs when the feature store is Redis,
        1 with the in-process memory store (features pushed to one process would be invisible
        to the others)."""
        if self.workers != "auto":
            return self.workers
        if not self.feature_store.startswith(REDIS_SCHEMES):
            return 1
        return min(usable_cpus(), MAX_WORKERS)

    @property
    def views_path(self) -> Path:
        return self.views if self.views is not None else self.models / "feature_views.yaml"
