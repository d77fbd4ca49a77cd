"""Datasets as in-memory uint8 tensors, class-stratified shards and a fast batch pipeline.

>>> data = load_dataset("synthetic")
>>> shards = split_shards(data.train_y, num_shards=3, seed=0)
>>> loader = BatchLoader(data.train_x, data.train_y, shards[0], 32, data.mean, data.std, train=True)

May import: ``toolbox.errors``, ``runtime``, ``storage``.
"""

from toolbox.data.datasets import (
    DATA_ENV,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageData,
    known_shape,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_data_root,
    with_normalization,
)
from toolbox.data.pipeline import BatchLoader, augment_batch, make_generator, normalize_batch
from toolbox.data.shards import split_shards

__all__ = [
    "DATA_ENV",
    "BatchLoader",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageData",
    "known_shape",
    "augment_batch",
    "list_datasets",
    "load_dataset",
    "make_generator",
    "normalize_batch",
    "register_dataset",
    "resolve_data_root",
    "split_shards",
    "with_normalization",
]
