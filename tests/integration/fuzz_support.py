"""What the fuzz suites share: a real gateway on a seeded redis-server, the hypothesis settings
that keep them deterministic and fast, a way to draw many examples up front, and the checks
every answer must pass (no internal error, no leaked detail).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from feature_store.open import open_store
from feature_store.synthetic import seed_synthetic
from feature_store.views import load_views
from service.protocol.datatypes import V2_TO_NUMPY
from service.server import create_app
from service.settings import Settings
from tests.conftest import MODELS_DIR, REPO_ROOT

ADMIN_TOKEN = "fuzz-admin-token"
INFERENCE_TOKEN = "fuzz-inference-token"
SEEDED = 5
# Every answer must come within this long; a slower one counts as a hang.
ANSWER_TIMEOUT_S = 10.0
# Deterministic (derandomize), no deadline on a shared 2-core machine, generation only: the
# examples are drawn up front and failures are reported whole, so there is nothing to shrink.
DRAW = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)

MODELS = ["fraud_mlp", "heavy_mlp"]
DATATYPES = list(V2_TO_NUMPY)
T = TypeVar("T")


def draw_many(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """`count` examples of `strategy`, the same every run; fewer when it has fewer distinct
    ones, none when it has none (schemathesis cannot violate an operation that takes nothing)."""
    drawn: list[T] = []

    @settings(DRAW, max_examples=count)
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    with suppress(Unsatisfiable):
        collect()
    return drawn


@dataclass(frozen=True)
class Gateway:
    app: FastAPI
    store_url: str


def inference_token_file(directory: Path) -> Path:
    """A token file holding INFERENCE_TOKEN, of the inference scope."""
    path = directory / "tokens"
    path.write_text(f"fuzz-inference:{INFERENCE_TOKEN}:inference\n")
    return path


@asynccontextmanager
async def gateway(
    store_url: str, grpc_port: int | None = None, inference_tokens: Path | None = None
) -> AsyncIterator[Gateway]:
    """The real app (pipeline, onnxruntime, admin API, and the gRPC front when a port is
    given) on `store_url`, seeded with entities u0..u{SEEDED-1}; with `inference_tokens` (a
    token file), inference asks for a token (--require-inference-token)."""
    views = load_views(MODELS_DIR / "feature_views.yaml")
    store = open_store(store_url)
    try:
        await seed_synthetic(store, views.values(), SEEDED)
    finally:
        await store.close()
    app = create_app(
        Settings(
            models=MODELS_DIR,
            feature_store=store_url,
            demo_entities=0,
            audit="none",
            admin_token=ADMIN_TOKEN,
            grpc_port=grpc_port,
            max_entities=64,
            max_tensor_elements=1 << 16,
            admin_token_file=inference_tokens,
            require_inference_token=inference_tokens is not None,
        )
    )
    async with app.router.lifespan_context(app):
        yield Gateway(app, store_url)


def leaks(answer: str, request: str, store_url: str) -> list[str]:
    """The internal details in `answer` that the request did not bring itself (an error may
    echo a path or a name the client sent)."""
    markers = [
        "Traceback",
        'File "',
        "fv:",
        "redis://",
        store_url,
        str(REPO_ROOT),
        "site-packages",
        '.py"',
    ]
    return [m for m in markers if m in answer and m not in request]


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON document, small."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def names(known: list[str]) -> st.SearchStrategy[str]:
    """Mostly a name the gateway knows, sometimes anything."""
    return st.sampled_from(known) | st.text(max_size=16)


def authorizations(token: str) -> st.SearchStrategy[str]:
    """An Authorization header value: mostly `token`, sometimes a wrong, malformed or empty
    one (no header at all)."""
    return st.sampled_from([f"Bearer {token}"] * 4 + ["Bearer wrong", "Basic x", "Bearer", ""])
