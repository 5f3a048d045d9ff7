"""Copies of a model repository with one model's config.yaml changed, for one measurement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

Config = dict[str, Any]


def changed_repository(
    models: Path, root: Path, model: str, change: Callable[[Config], Config]
) -> Path:
    """A repository at `root` that is `models` but for `model`'s config.yaml, which is
    `change(config)`; everything else is linked, not copied. Returns `root`."""
    root.mkdir(parents=True)
    for entry in models.iterdir():
        if entry.name != model:
            (root / entry.name).symlink_to(entry.resolve())
    source, target = models / model, root / model
    target.mkdir()
    for entry in source.iterdir():
        if entry.name != "config.yaml":
            (target / entry.name).symlink_to(entry.resolve())
    config = yaml.safe_load((source / "config.yaml").read_text())
    (target / "config.yaml").write_text(yaml.safe_dump(change(config), sort_keys=False))
    return root


def merged(config: Config, changes: Config) -> Config:
    """`config` with `changes` laid over it, section by section (nested dicts merge)."""
    out = dict(config)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
