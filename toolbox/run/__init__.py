"""A run: steps x phases, the epoch loop, what a run carries between phases, resume, its inputs
(dataset, validation split, shards), its directory, logs and TensorBoard events, its lock, several
seeds, ``toolbox step``, the serve files and the results tables.

May import: everything but ``tune`` and ``cli``.
``from toolbox.run import start_run, resume_run, Run`` is the stable entry point from Python.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Run", "start_run", "resume_run"]


def __getattr__(name: str) -> Any:
    """``Run``, ``start_run`` and ``resume_run``, imported on first use."""
    if name == "Run":
        from toolbox.run.run import Run

        return Run
    if name in __all__:
        from toolbox.run import start

        return getattr(start, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
