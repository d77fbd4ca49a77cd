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


def load_run_dataset(name: str, data_root: str | os.PathLike[str] | None, steps: int,
                     per_class: int | None, val_per_class: int = 0) -> ImageData:
    """Load dataset ``name`` for a run of ``steps`` shards of ``per_class`` images per class.

    ``synthetic`` is generated with as many images per class as the shards and the validation set
    need (:func:`toolbox.data.synthetic.sizes_for_run`). ``auto`` is Fashion-MNIST (downloaded
    into the data root when missing and online), else the synthetic set with a warning. Raises
    :class:`DatasetNotFoundError` or ``ValueError`` (unknown name) like :func:`load_dataset`.
    """
    if name == "auto":
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
