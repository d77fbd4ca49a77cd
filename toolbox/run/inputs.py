"""The data of a run: the dataset, its validation split and step shards, and each process's loaders.

Under ``torchrun`` every process trains on its share of every global batch and evaluates its part
of the test (and validation) images; on one process the loaders see everything.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import nn

from toolbox.data import (
    BatchLoader,
    DatasetNotFoundError,
    ImageData,
    load_dataset,
    shard_folders,
    split_shards,
    with_normalization,
)
from toolbox.data.arrivals import class_counts, default_shards
from toolbox.data.auto import load_run_dataset
from toolbox.data.imagefolder import FolderImages
from toolbox.data.manifest import (check_repeated_folders, check_test_overlap, check_validation_overlap,
                                   labelled_steps)
from toolbox.data.shards import check_validation_size
from toolbox.errors import UsageError
from toolbox.options import RunOptions, read_mapping
from toolbox.plugin_host import calls
from toolbox.run.engine import evaluate
from toolbox.runtime import distributed

log = logging.getLogger("toolbox")


def load_run_data(options: RunOptions) -> ImageData:
    """Load the run's dataset; ``auto`` means Fashion-MNIST where present or downloadable, else
    synthetic, and ``synthetic`` is sized for the shards (:func:`toolbox.data.auto.load_run_dataset`).

    ``options.dataset`` is set to the name actually used, so config.yaml records it;
    ``--mean/--std`` replace the dataset's normalization.
    """
    try:
        if options.dataset in ("auto", "synthetic"):
            data = load_run_dataset(options.dataset, options.data_root, options.steps, options.per_class,
                                    options.val_per_class)
            options.dataset = data.name
        elif options.dataset == "imagefolder":
            from toolbox.data.imagefolder import load_imagefolder  # Pillow only when needed

            data = load_imagefolder(options.data_root, options.train, options.test, options.image_size,
                                    options.channels, options.skip_bad_images, options.allow_overlap)
        else:
            data = load_dataset(options.dataset, options.data_root)
        return with_normalization(data, options.mean, options.std)
    except DatasetNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def started_before(options: RunOptions) -> bool:
    """Whether this ``--shards`` run is being resumed: its run directory holds the config of the
    same folders (then the leakage checks were done when it started)."""
    config = Path(options.out or "") / "config.yaml"
    if not options.out or not config.is_file():
        return False
    try:
        recorded = read_mapping(config)
    except UsageError:
        return False
    return recorded.get("shards") == options.shards and recorded.get("test") == options.test


def check_shard_overlap(data: ImageData, options: RunOptions) -> None:
    """Decode every step folder (into the cache the steps read later) and refuse a test image that
    is also in a step folder (``--allow-overlap``: a warning); the manifests and the images
    ``--skip-bad-images`` left out of each folder go into ``data``."""
    manifests, skipped = data.manifests, data.skipped_by_folder
    manifests.steps = shard_folders.step_manifests(options, skipped=skipped)
    data.skipped = [image for images in skipped.values() for image in images]
    steps = labelled_steps(manifests.steps)
    check_test_overlap(steps, manifests.test, options.allow_overlap)
    if options.val:
        val = shard_folders.load_validation(options).manifests[0]
        check_validation_overlap(val, manifests.test, steps, options.allow_overlap)


def arrive(labels: torch.Tensor, options: RunOptions, pm: pluggy.PluginManager | None = None) -> list[torch.Tensor]:
    """The step shards of ``labels`` by the run's ``--split``: a ``toolbox_arrivals`` plugin's
    answer, else the built-in process (:mod:`toolbox.data.arrivals`)."""
    args = (labels, options.steps, options.seed, options.per_class, options.split)
    shards = None if pm is None else calls.arrivals(pm, *args)
    if shards is None:
        shards = default_shards(*args)
    if shards is None:
        raise UsageError(f"--split {options.split!r} is unknown and no enabled plugin supplies it; use stratified "
                         "or dirichlet:ALPHA, or enable the plugin that implements toolbox_arrivals for it.")
    return [torch.as_tensor(s, dtype=torch.int64) for s in shards]


def split_validation_and_shards(labels: torch.Tensor, options: RunOptions,
                                pm: pluggy.PluginManager | None = None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Hold out ``val_per_class`` training images per class (for choosing hyper-parameters), then
    split the rest into the step shards (:func:`arrive`). Both come from the run's seed."""
    if not options.val_per_class:
        return None, arrive(labels, options, pm)
    check_validation_size(labels, options.val_per_class, options.steps, options.per_class)
    (validation,) = split_shards(labels, 1, options.seed + 7919, options.val_per_class)
    rest = torch.ones(labels.numel(), dtype=torch.bool)
    rest[validation] = False
    remaining = rest.nonzero().flatten()
    shards = arrive(labels[remaining], options, pm)
    return validation, [remaining[s] for s in shards]


def eval_part(indices: torch.Tensor | None, total: int) -> torch.Tensor | None:
    """The evaluation images of this process: all of them on one process, else its part."""
    if not distributed.active():
        return indices
    return distributed.shard(torch.arange(total) if indices is None else indices)


class RunData:
    """The dataset of a run with its validation split and shards, and the loaders over them."""

    def __init__(self, options: RunOptions, device: torch.device, pm: pluggy.PluginManager | None = None) -> None:
        self.options = options
        self.device = device
        self.steps: dict[int, FolderImages] = {}
        self.sizes: dict[tuple[int, str], int] = {}  # (step, folder) -> images, for schedule_shards
        if options.shards:  # one folder per step, decoded when the step trains
            shard_folders.check_shard_options(options)
            fresh = not started_before(options)
            if fresh:
                check_repeated_folders(options.shards, options.allow_overlap)
            shard_folders.fix_shared_settings(options)
            self.data: ImageData = shard_folders.load_shard_run_data(options)
            if fresh:
                check_shard_overlap(self.data, options)
            else:  # checked when the run started (and by `toolbox step`); manifests.json holds them
                self.data.manifests = None
            self.validation, self.shards = None, []
            self.val_images = shard_folders.load_validation(options) if options.val else None
            return
        self.val_images = None
        self.data = load_run_data(options)
        try:
            self.validation, self.shards = split_validation_and_shards(self.data.train_y, options, pm)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def arrivals(self) -> dict[str, Any] | None:
        """The split and every step's class counts (ascending label), for shards.json and the
        results; None in a ``--shards`` run (the folders are the arrivals)."""
        if self.options.shards:
            return None
        return {"split": self.options.split, "class_counts": class_counts(self.data.train_y, self.shards)}

    def schedule_shards(self) -> list[torch.Tensor]:
        """The shards ``toolbox_data_schedule`` chooses from: index tensors into the training set.

        In a ``--shards`` run the training set is the step folders still present, one after the
        other, so ``shards[k - 1]`` indexes step k's folder's images as for a single dataset (a
        folder that is gone gives an empty shard)."""
        if not self.options.shards:
            return self.shards
        start, shards = 0, []
        for step, folder in enumerate(self.options.shards, 1):
            if (step, folder) not in self.sizes:
                present = step in self.steps or Path(folder).expanduser().is_dir()
                self.sizes[(step, folder)] = int(self._step_images(step).y.numel()) if present else 0
            count = self.sizes[(step, folder)]
            shards.append(torch.arange(start, start + count))
            start += count
        return shards

    def _step_images(self, step: int) -> FolderImages:
        """Step ``step``'s decoded folder (the current step's is kept; others are read again)."""
        if step in self.steps:
            return self.steps[step]
        return shard_folders.load_step(self.options, step)

    def training_set(self, step: int, chosen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(images, labels, indices)`` a phase of ``step`` trains on: the step's shard, or what a
        ``toolbox_data_schedule`` plugin chose (``chosen``, indices into the training set; in a
        ``--shards`` run, into :meth:`schedule_shards`' concatenation of the step folders)."""
        if not self.options.shards:
            data = self.data
            return data.train_x, data.train_y, self.shards[step - 1] if chosen is None else chosen
        if step not in self.steps:
            self.steps = {step: shard_folders.load_step(self.options, step)}  # the previous step's map is dropped
        images = self.steps[step]
        if chosen is None:
            return images.x, images.y, None
        return self._folder_choice(step, chosen.cpu().long())

    def _folder_choice(self, step: int, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The images ``chosen`` names across the step folders: step ``step``'s folder with indices
        when they all lie in it (all of it: no indices), else the chosen images gathered into memory."""
        pieces: dict[int, torch.Tensor] = {}
        start = found = 0
        for k, shard in enumerate(self.schedule_shards(), 1):
            inside = chosen[(chosen >= start) & (chosen < start + shard.numel())] - start
            if inside.numel():
                pieces[k] = inside
                found += inside.numel()
            start += shard.numel()
        if found != chosen.numel():
            raise UsageError(f"A plugin chose training images outside the step folders (toolbox_data_schedule: "
                             f"indices must be below {start}); fix the plugin's data schedule.")
        if not pieces or list(pieces) == [step]:
            images, local = self.steps[step], pieces.get(step, chosen)
            whole = local.numel() == images.y.numel() and bool((local == torch.arange(local.numel())).all())
            return images.x, images.y, None if whole else local
        parts = [(self._step_images(k), local) for k, local in pieces.items()]
        x = torch.cat([part.x[local] for part, local in parts])
        return x, torch.cat([part.y[local] for part, local in parts]), None

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the images."""
        return (self.data.in_chans, self.data.image_size, self.data.image_size)

    def train_loader(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor | None, seed: int) -> BatchLoader:
        """Augmented training batches of ``x[indices]`` (all of ``x`` when ``None``); each process gets
        its share of every global batch."""
        data, options = self.data, self.options
        return BatchLoader(x, y, indices, options.batch_size, data.mean, data.std, train=True,
                           seed=seed, device=self.device, channels_last=options.channels_last,
                           rank=distributed.rank(), world_size=distributed.world_size())

    def plain_loader(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor | None) -> BatchLoader:
        """Every image of ``x[indices]`` once, unaugmented, in stored order, ``--batch-size`` per batch,
        on every process (``ctx.train_batches()``)."""
        data, options = self.data, self.options
        return BatchLoader(x, y, indices, options.batch_size, data.mean, data.std, train=False,
                           device=self.device, channels_last=options.channels_last)

    def test_loader(self) -> BatchLoader:
        """The test set, unaugmented (each process gets its part of it)."""
        data = self.data
        return self._eval_loader(data.test_x, data.test_y, None)

    @property
    def has_validation(self) -> bool:
        """Whether the run holds out validation images (``--val-per-class`` or ``--val DIR``)."""
        return self.validation is not None or self.val_images is not None

    def validation_loader(self, whole: bool = False) -> BatchLoader:
        """The held-out validation images (from the training set, or ``--val DIR``'s), unaugmented."""
        if self.val_images is not None:
            return self._eval_loader(self.val_images.x, self.val_images.y, None, whole)
        data = self.data
        return self._eval_loader(data.train_x, data.train_y, self.validation, whole)

    def whole_test_loader(self) -> BatchLoader:
        """Every test image on this process (for the step review, which runs on one process)."""
        return self._eval_loader(self.data.test_x, self.data.test_y, None, whole=True)

    def _eval_loader(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor | None,
                     whole: bool = False) -> BatchLoader:
        data, options = self.data, self.options
        part = indices if whole else eval_part(indices, y.numel())
        return BatchLoader(x, y, part, options.eval_batch_size, data.mean, data.std,
                           train=False, seed=0, device=self.device, channels_last=options.channels_last)

    def evaluate(self, model: nn.Module, precision: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(test scores, record fields)``: top-1/top-5 and loss on the test set (summed over the
        processes) and, with a validation split, its top-1 and loss; no top-5 field for a model of
        five classes or fewer."""
        test = evaluate(model, self.test_loader(), self.device, precision, across_processes=True)
        scores = {"top1": test["top1"], "top5": test["top5"], "test_loss": test["loss"]}
        if self.has_validation:
            val = evaluate(model, self.validation_loader(), self.device, precision, across_processes=True)
            scores.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
        test = {name: value for name, value in test.items() if value is not None}  # no top-5 for <= 5 classes
        scores = {name: value for name, value in scores.items() if value is not None}  # no top-5 for <= 5 classes
        broken = [name for name in ("test_loss", "val_loss") if name in scores and not math.isfinite(scores[name])]
        if broken:
            log.warning("The model's %s is not finite: it outputs NaN or inf on some images (diverged weights "
                        "or BatchNorm statistics?); its top-1 is not meaningful.", " and ".join(broken))
        return test, scores

