"""Where pretrained weights come from: hub ids, local folders and offline-shipped models."""

from __future__ import annotations


def resolve_source(name_or_path: str) -> str:
    """The path or hub id transformers should load for `name_or_path`."""
    return name_or_path
