"""The feature store's errors: one small hierarchy, so callers can catch `FeatureStoreError`.

Messages are complete sentences for operators and clients; none carries a traceback.
"""

from __future__ import annotations


class FeatureStoreError(Exception):
    """Base class of every error the feature store raises on purpose."""


class ViewConfigError(FeatureStoreError):
    """A view declaration (or a data file loaded into a view) is invalid.

    The message names the file and the field, e.g.
    ``models/feature_views.yaml: views[1].ttl_s: Input should be greater than 0``.
    """


class EntityNotFound(FeatureStoreError):
    """A view declared with ``on_missing: error`` has no row for a requested entity."""

    def __init__(self, view: str, entity: str, entity_id: str, *, also_missing: int = 0) -> None:
        more = f" (and {also_missing} more)" if also_missing else ""
        super().__init__(f"feature view {view!r} has no row for {entity} {entity_id!r}{more}")
        self.view = view
        self.entity_id = entity_id


class StoreUnavailable(FeatureStoreError):
    """The backend cannot be reached or did not answer within its timeout."""


class PartlyUnavailable(StoreUnavailable):
    """Some of a fetch's keys live on servers that did not answer (a cluster node down).

    Carries what the other servers answered, so that a read of many lookups fails only the
    lookups that needed a missing server: `blobs` has one value per key (None where absent or
    unreached) and `unreached` the indices of the keys no server answered for.
    """

    def __init__(self, message: str, blobs: list[bytes | None], unreached: list[int]) -> None:
        super().__init__(message)
        self.blobs = blobs
        self.unreached = unreached


class SchemaMismatch(FeatureStoreError):
    """A stored row was written for another schema (names, dtype, width or layout version)."""
