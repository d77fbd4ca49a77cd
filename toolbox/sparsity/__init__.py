"""Sparsity training: BN channel groups (what one filter is), L1 on chosen BN scales, the target
schedule that stops at a ratio of unimportant filters, :class:`SparsityTraining` (the base of every
sparsity plugin) and its plots.

May import: the plugin-facing API, ``plugin_host``, ``runtime``, ``storage``, ``models``, ``data``.
Never imports ``run``, ``tune``, ``cli`` or ``preflight``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SparsityTraining", "Units"]


def __getattr__(name: str) -> Any:
    """``toolbox.sparsity.SparsityTraining`` and ``Units``, imported on first use."""
    if name in __all__:
        from toolbox.sparsity import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
