"""The dataset of a run: ``auto`` resolved, and the synthetic set sized for the run's shards.

``auto`` is Fashion-MNIST when its files are found (or can be downloaded); otherwise the synthetic
shapes, with a warning and a ``source`` that says the numbers are synthetic, so a fresh offline
machine still runs the README's main command to the end.
"""

from __future__ import annotations

import logging
import os

from toolbox.data import synthetic
from toolbox.data.datasets import DatasetNotFoundError, ImageData, load_dataset

log = logging.getLogger("toolbox")

#: ``ImageData.source`` (and the results' ``dataset_source``) of an ``auto`` run that fell back.
FALLBACK_SOURCE = "SYNTHETIC shapes (Fashion-MNIST not found): these numbers are not Fashion-MNIST's"


#: Fashion-MNIST as :func:`auto_name` loaded it, for the run's own load (so it is read once).
_resolved: dict[str, ImageData] = {}


def _key(data_root: str | os.PathLike[str] | None) -> str:
    """The cache key of a data root (absolute, so a relative and an absolute spelling agree)."""
    return "" if data_root is None else os.path.abspath(os.path.expanduser(data_root))


def auto_name(data_root: str | os.PathLike[str] | None) -> str:
    """The dataset ``auto`` resolves to with ``data_root``: ``fashion_mnist`` where it is found or
    downloaded, else ``synthetic`` (no warning here; :func:`load_run_dataset` gives it and reuses
    what this loaded)."""
    try:
        _resolved[_key(data_root)] = load_dataset("fashion_mnist", data_root, download=True)
    except DatasetNotFoundError:
        return "synthetic"
    return "fashion_mnist"


def load_run_dataset(name: str, data_root: str | os.PathLike[str] | None, steps: int,
                     per_class: int | None, val_per_class: int = 0) -> ImageData:
    """Load dataset ``name`` for a run of ``steps`` shards of ``per_class`` images per class.

    ``synthetic`` is generated with as many images per class as the shards and the validation set
    need (:func:`toolbox.data.synthetic.sizes_for_run`). ``auto`` is Fashion-MNIST (downloaded
    into the data root when missing and online), else the synthetic set with a warning. Raises
    :class:`DatasetNotFoundError` or ``ValueError`` (unknown name) like :func:`load_dataset`.
    """
    if name == "auto":
        found = _resolved.pop(_key(data_root), None)
        if found is not None:
            return found
        try:
            return load_dataset("fashion_mnist", data_root, download=True)
        except DatasetNotFoundError as exc:
            log.warning("%s Using the SYNTHETIC shapes dataset instead: the numbers of this run are "
                        "synthetic, not Fashion-MNIST's.", exc)
            data = synthetic.generate(*synthetic.sizes_for_run(steps, per_class, val_per_class))
            data.source = FALLBACK_SOURCE
            return data
    if name == "synthetic":
        return synthetic.generate(*synthetic.sizes_for_run(steps, per_class, val_per_class))
    return load_dataset(name, data_root)
