"""Online feature store: view declarations, the packed row codec, and async stores.

Knows nothing of the serving layer (`service`); the serving layer imports from here.
"""

from feature_store.coalescing import CoalescingReader
from feature_store.codec import decode_rows, encode_row, encode_rows, row_key
from feature_store.errors import (
    EntityNotFound,
    FeatureStoreError,
    SchemaMismatch,
    StoreUnavailable,
    ViewConfigError,
)
from feature_store.loader import load_file, seed_synthetic, synthetic_rows
from feature_store.memory_store import MemoryStore
from feature_store.redis_store import RedisStore
from feature_store.store import Lookup, OnlineStore, Status, ViewRows, open_store
from feature_store.views import FeatureSpec, FeatureView, load_views

__all__ = [
    "CoalescingReader",
    "EntityNotFound",
    "FeatureSpec",
    "FeatureStoreError",
    "FeatureView",
    "Lookup",
    "MemoryStore",
    "OnlineStore",
    "RedisStore",
    "SchemaMismatch",
    "Status",
    "StoreUnavailable",
    "ViewConfigError",
    "ViewRows",
    "decode_rows",
    "encode_row",
    "encode_rows",
    "load_file",
    "load_views",
    "open_store",
    "row_key",
    "seed_synthetic",
    "synthetic_rows",
]
