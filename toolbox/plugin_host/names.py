"""The ``plugins`` value of a config or the flags, read as a list of plugin names."""

from __future__ import annotations

from typing import Any


def plugin_names(values: dict[str, Any]) -> list[str]:
    """The ``plugins`` value as a list of names (a comma-separated string, a list, or one value)."""
    names = values.get("plugins") or []
    if isinstance(names, str):
        return [p.strip() for p in names.split(",") if p.strip()]
    if isinstance(names, (list, tuple)):
        return [str(name) for name in names]
    return [str(names)]
