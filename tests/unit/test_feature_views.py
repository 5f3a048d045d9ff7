"""Feature view declarations: the demo file, derived properties, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feature_store.errors import ViewConfigError
from feature_store.views import FeatureView, load_views
from tests.conftest import MODELS_DIR

GOOD_VIEW = """
  - name: {name}
    entity: user_id
    features: [{{name: a}}, {{name: b, default: 2}}]
"""


def write_views(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "views.yaml"
    path.write_text(body)
    return path


def view(**overrides: object) -> FeatureView:
    fields: dict[str, object] = {
        "name": "txn_stats",
        "entity": "user_id",
        "features": [{"name": "a"}, {"name": "b", "default": 2}],
    }
    return FeatureView.model_validate(fields | overrides)


def test_demo_views_give_the_fraud_model_32_float32_features_of_user_id() -> None:
    views = load_views(MODELS_DIR / "feature_views.yaml")
    assert list(views) == ["txn_stats", "user_profile"]
    assert [v.width for v in views.values()] == [16, 16]
    assert {v.entity for v in views.values()} == {"user_id"}
    assert {v.dtype for v in views.values()} == {"float32"}
    assert views["txn_stats"].ttl_s == 86400
    assert views["user_profile"].ttl_s is None


def test_defaults_are_a_read_only_array_of_the_view_dtype() -> None:
    defaults = view(dtype="int64").defaults
    assert defaults.dtype == np.dtype("<i8")
    assert defaults.tolist() == [0, 2]
    with pytest.raises(ValueError, match="read-only"):
        defaults[0] = 1


def test_schema_hash_follows_the_stored_layout_only() -> None:
    base = view().schema_hash
    assert view(ttl_s=5, on_stale="default", on_missing="error").schema_hash == base
    assert view(features=[{"name": "a"}, {"name": "b", "default": 9}]).schema_hash == base
    assert view(features=[{"name": "b"}, {"name": "a"}]).schema_hash != base
    assert view(dtype="int64").schema_hash != base
    assert view(name="other").schema_hash != base
    assert 0 <= base < 2**32


def test_views_compare_equal_after_their_cached_properties_are_computed() -> None:
    a, b = view(), view()
    assert a.defaults is not None and a.schema_hash
    assert a == b


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "views:" + GOOD_VIEW.format(name="a") + GOOD_VIEW.format(name="b") + "    ttl_s: 0\n",
            r"views\[1\]\.ttl_s: Input should be greater than 0",
        ),
        (
            "views:" + GOOD_VIEW.format(name="a") + "    ttl: 60\n",
            r"views\[0\]\.ttl: Extra inputs are not permitted",
        ),
        (
            "views:" + GOOD_VIEW.format(name="a") + "    on_stale: drop\n",
            r"views\[0\]\.on_stale: Input should be 'serve' or 'default'",
        ),
        (
            "views:\n  - {name: a, entity: user_id, features: [{name: x}, {name: x}]}\n",
            r"views\[0\]\.features: duplicate feature names: x",
        ),
        (
            "views:\n  - {name: a, entity: user_id, features: [{name: x}, {nam: y}]}\n",
            r"views\[0\]\.features\[1\]\.name: Field required",
        ),
        (
            "views:\n  - {name: a, entity: user_id, features: []}\n",
            r"views\[0\]\.features: List should have at least 1 item",
        ),
        (
            "views:\n  - {name: 'a}b', entity: user_id, features: [{name: x}]}\n",
            r"views\[0\]\.name: String should match pattern",
        ),
        (
            "views:\n  - {name: a, entity: user_id, dtype: int64,\n"
            "     features: [{name: x, default: 0.5}]}\n",
            r"views\[0\]: int64 view needs integral defaults: x",
        ),
        (
            "views:" + GOOD_VIEW.format(name="a") + GOOD_VIEW.format(name="a"),
            r"views\[1\]\.name: duplicate view name 'a'",
        ),
        ("view: []\n", r"views: Field required"),
        ("views: [\n", r"invalid YAML"),
    ],
    ids=[
        "ttl_not_positive",
        "unknown_field",
        "bad_literal",
        "duplicate_feature",
        "feature_without_name",
        "no_features",
        "name_with_brace",
        "int64_fractional_default",
        "duplicate_view",
        "no_views_key",
        "bad_yaml",
    ],
)
def test_invalid_views_file_error_names_the_file_and_the_field(
    tmp_path: Path, body: str, message: str
) -> None:
    path = write_views(tmp_path, body)
    with pytest.raises(ViewConfigError, match=message) as caught:
        load_views(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_unreadable_views_file_is_a_view_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ViewConfigError, match=f"{missing}: cannot read"):
        load_views(missing)
