"""Data that arrives over time: one image folder per step (``--shards DIR1,DIR2,... --test DIR``).

A step trains on its folder's images from the memory-mapped cache (decoded once, when the run
starts, for the manifests of :mod:`toolbox.data.manifest`), so a run continued by ``toolbox step``
never needs an earlier step's folder. What every later step must
share is fixed at the run's start and recorded in its options (so in ``config.yaml``): the class
names (the first folder's class folders, sorted), the image size, the channels and the per-channel
mean/std (the first folder's statistics unless ``--mean/--std`` are given).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from toolbox.data.datasets import ImageData, check_normalization
from toolbox.data.imagefolder import (
    DEFAULT_IMAGE_SIZE,
    NAME,
    FolderImages,
    class_folders,
    folder_channels,
    load_image_folders,
)
from toolbox.data.manifest import Manifest, RunManifests
from toolbox.errors import UsageError


def check_shard_options(options: Any) -> None:
    """Refuse what a ``--shards`` run cannot do, with one sentence each."""
    if not options.test:
        raise UsageError("--shards needs --test DIR: the folder of test images every step is evaluated on.")
    if options.train or options.data_root:
        raise UsageError("--shards gives each step's images itself; drop --data-root/--train.")
    if options.per_class or options.val_per_class:
        raise UsageError("--per-class and --val-per-class split one dataset; with --shards each folder is a "
                         "step's data as it is (hold out validation folders yourself).")


def fix_shared_settings(options: Any) -> None:
    """At a run's start: record the classes, image size, channels and mean/std every step shares."""
    first = Path(options.shards[0]).expanduser()
    options.classes = options.classes or class_folders(first, "step 1 image")
    options.image_size = options.image_size or DEFAULT_IMAGE_SIZE
    if options.channels is None:  # fixed first, so this pass and the training pass share one cache entry
        options.channels = folder_channels(first, options.classes, "step 1 image")
    own = options.std
    if options.mean is None or options.std is None:
        images = load_step(options, 1)
        options.mean, own = list(options.mean or images.mean), images.std
    # a constant channel (std 0) or a --mean/--std of the wrong length: one sentence, before the run directory
    options.std = list(check_normalization(f"the step 1 images in {first}", options.channels, options.mean,
                                           options.std, own))


def load_step(options: Any, step: int) -> FolderImages:
    """The decoded images of step ``step``'s folder (its classes must be the run's)."""
    folder = Path(options.shards[step - 1]).expanduser()
    if not folder.is_dir():
        raise UsageError(f"Step {step}'s image folder {folder} is gone; it is needed to train step {step} "
                         "(a finished step never needs its folder again).")
    return load_image_folders([folder], options.classes, options.image_size, options.channels,
                              options.skip_bad_images, what=f"step {step} image")


def load_validation(options: Any) -> FolderImages:
    """The decoded images of the ``--val`` folder (validation images the promotion gate judges on)."""
    return load_image_folders([Path(options.val).expanduser()], options.classes, options.image_size,
                              options.channels, options.skip_bad_images, require_all_classes=False,
                              what="validation image")


def folder_manifest(options: Any, folder: Path, what: str, skipped: list[str] | None = None) -> Manifest:
    """The manifest of ``folder`` decoded with the run's settings (through the decoded cache, so
    the step that trains on it later reads the cache); the images ``--skip-bad-images`` left out
    are appended to ``skipped`` (as "path (reason)") when given."""
    images = load_image_folders([Path(folder).expanduser()], options.classes, options.image_size, options.channels,
                                options.skip_bad_images, what=what)
    if skipped is not None:
        skipped += images.skipped
    return images.manifests[0]


def step_manifests(options: Any, known: Collection[int] = (),
                   skipped: dict[str, list[str]] | None = None) -> dict[int, Manifest]:
    """The manifests of the step folders that still exist (a finished step's folder may be gone),
    except the steps in ``known``; ``skipped`` (when given) gets each decoded folder's left-out
    images under ``"step K"``."""
    manifests = {}
    for step, folder in enumerate(options.shards, 1):
        if step not in known and Path(folder).expanduser().is_dir():
            left_out: list[str] = []
            manifests[step] = folder_manifest(options, Path(folder), f"step {step} image", left_out)
            if skipped is not None:
                skipped[step_key(step)] = left_out
    return manifests


def step_key(step: int) -> str:
    """The key of step ``step``'s folder in data.json's ``skipped_by_folder``."""
    return f"step {step}"


def shard_source(steps: int, test: Path | str) -> str:
    """What a ``--shards`` run's data is, for logs and reports (``toolbox step`` updates it)."""
    return f"{steps} step folders, test {test}"


def load_shard_run_data(options: Any) -> ImageData:
    """The run's :class:`ImageData`: the test folder's images, no training images (each step's
    come from :func:`load_step` when it trains), the shared normalization, and the test folder's
    manifest."""
    test = load_image_folders([Path(options.test).expanduser()], options.classes, options.image_size,
                              options.channels, options.skip_bad_images, require_all_classes=False,
                              what="test image")
    empty_x = torch.zeros((0, *test.x.shape[1:]), dtype=torch.uint8)
    return ImageData(name=NAME, train_x=empty_x, train_y=torch.zeros(0, dtype=torch.int64), test_x=test.x,
                     test_y=test.y, num_classes=len(options.classes), mean=tuple(options.mean),
                     std=tuple(options.std), source=shard_source(len(options.shards), test.folders[0]),
                     classes=list(options.classes), skipped=list(test.skipped),
                     skipped_by_folder={"test": list(test.skipped)}, manifests=RunManifests(test=test.manifests[0]))
