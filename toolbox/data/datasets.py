"""Datasets as in-memory uint8 tensors: the ``ImageData`` record, the registry and ``load_dataset``.

Every loader reads its files once into contiguous ``uint8`` tensors (N x C x H x W) so that the
training loop never touches PIL or the disk; augmentation happens on whole batches in
:mod:`toolbox.data.pipeline`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from toolbox.errors import UsageError

#: Environment variable naming the directory that holds the datasets.
DATA_ENV = "TOOLBOX_DATA"

#: Where datasets live when neither ``--data-root`` nor ``$TOOLBOX_DATA`` says otherwise.
DEFAULT_DATA_SUBDIR = Path(".cache") / "toolbox" / "data"

_Found = TypeVar("_Found")


class DatasetNotFoundError(UsageError, FileNotFoundError):
    """A dataset whose files are not where we looked and could not be downloaded.

    ``str(error)`` is one sentence naming the folder that was searched and how to point the
    toolbox at a copy (``--data-root DIR`` or ``TOOLBOX_DATA``).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatasetFormatError(UsageError, ValueError):
    """A dataset file that exists but is truncated, corrupt or not in the expected format."""


@dataclass
class ImageData:
    """A whole image-classification dataset held in memory.

    Images are ``uint8`` tensors (N x C x H x W, contiguous), labels ``int64``. ``mean`` and
    ``std`` are per-channel statistics in [0, 1] units, meant for normalising the images after
    dividing by 255. ``source`` says where the data came from, for logs and reports.
    ``classes`` names the classes in label order where the dataset knows them (image folders);
    ``skipped`` lists the unreadable images left out (``--skip-bad-images``), as "path (reason)";
    ``skipped_by_folder`` (``--shards`` runs) the same per folder (``"test"``, ``"step K"``).
    ``manifests`` (a :class:`toolbox.data.manifest.RunManifests`, ``--shards`` runs) lists the
    images of the run's folders with their content hashes.
    The image tensors may be memory-mapped from a decoded cache: read them, never write to them.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    classes: list[str] | None = None
    skipped: list[str] = field(default_factory=list)
    skipped_by_folder: dict[str, list[str]] | None = None
    manifests: Any = None

    @classmethod
    def from_splits(cls, name: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                    num_classes: int, mean: tuple[float, ...], std: tuple[float, ...], source: str) -> ImageData:
        """The dataset from the ``(images, labels)`` pairs of its training and test splits."""
        return cls(name=name, train_x=train[0], train_y=train[1], test_x=test[0], test_y=test[1],
                   num_classes=num_classes, mean=mean, std=std, source=source)

    @property
    def in_chans(self) -> int:
        """Number of image channels (3 for RGB, 1 for grayscale)."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Image height in pixels (all built-in datasets have square images)."""
        return int(self.train_x.shape[2])


#: A loader takes the resolved data root and the ``download`` flag and returns the dataset.
Loader = Callable[[Path, bool], ImageData]

# Built-in datasets, imported lazily so that e.g. PIL is only imported for Tiny ImageNet.
_BUILTIN: dict[str, str] = {
    "cifar100": "toolbox.data.cifar100",
    "fashion_mnist": "toolbox.data.fashion_mnist",
    "imagefolder": "toolbox.data.imagefolder",
    "synthetic": "toolbox.data.synthetic",
    "tiny_imagenet": "toolbox.data.tiny_imagenet",
}
_REGISTERED: dict[str, Loader] = {}
#: ``(in_chans, image_size, num_classes)`` of the built-in datasets, known without loading them.
_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar100": (3, 32, 100),
    "tiny_imagenet": (3, 64, 200),
    "fashion_mnist": (1, 32, 10),
    "synthetic": (3, 16, 10),
}


def register_dataset(name: str, loader: Loader, shape: tuple[int, int, int] | None = None) -> None:
    """Make ``loader`` available to :func:`load_dataset` under ``name`` (e.g. from a plugin);
    ``shape`` is ``(in_chans, image_size, num_classes)`` when known without loading."""
    if not name or name != name.strip():
        raise ValueError(f"Dataset name {name!r} must be a non-empty word without spaces.")
    _REGISTERED[name] = loader
    if shape is not None:
        _SHAPES[name] = shape


def known_shape(name: str) -> tuple[int, int, int] | None:
    """``(in_chans, image_size, num_classes)`` of a dataset when known without loading it, else None."""
    return _SHAPES.get(name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def resolve_data_root(data_root: str | os.PathLike[str] | None) -> Path:
    """The directory holding datasets: ``data_root`` if given, else ``$TOOLBOX_DATA``, else
    ``~/.cache/toolbox/data``. ``~`` is expanded; the directory need not exist."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / DEFAULT_DATA_SUBDIR


def load_dataset(
    name: str, data_root: str | os.PathLike[str] | None = None, download: bool = True
) -> ImageData:
    """Load dataset ``name`` from ``data_root`` (see :func:`resolve_data_root`).

    When the files are missing and ``download`` is true the loader tries to fetch them; if
    that fails (e.g. offline) it raises :class:`DatasetNotFoundError`. An unknown ``name``
    raises ``ValueError`` listing the known datasets.
    """
    loader = _REGISTERED.get(name)
    if loader is None:
        module = _BUILTIN.get(name)
        if module is None:
            known = ", ".join(list_datasets())
            raise ValueError(f"Unknown dataset {name!r}; choose one of: {known}.")
        loader = importlib.import_module(module).load
    return loader(resolve_data_root(data_root), download)


def with_normalization(data: ImageData, mean: list[float] | None, std: list[float] | None) -> ImageData:
    """``data`` with the given per-channel ``mean`` and/or ``std`` (``--mean/--std``) instead of its
    own; see :func:`check_normalization` for what is refused."""
    final = check_normalization(f"the {data.name} images", data.in_chans, mean, std, data.std)
    return replace(data, mean=tuple(mean) if mean else data.mean, std=final)


def check_normalization(what: str, channels: int, mean: list[float] | None, std: list[float] | None,
                        own_std: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """The std the images of ``what`` are normalized with (``std``, else their own); a ``--mean``
    or ``--std`` whose length is not ``channels``, or a constant channel (std 0) that ``--std``
    does not replace, is one sentence."""
    for flag, values in (("--mean", mean), ("--std", std)):
        if values and len(values) != channels:
            raise UsageError(f"{flag} gives {len(values)} values but {what} have {channels} channel(s); give one "
                             "value per channel.")
    final = tuple(std) if std else tuple(own_std)
    flat = next((c for c, v in enumerate(final) if not v > 0), None)
    if flat is not None:
        raise UsageError(f"Channel {flat + 1} of {len(final)} of {what} is constant (std {final[flat]:g}), so it "
                         "cannot be normalized; pass --mean/--std with a positive std for every channel, e.g. "
                         f"--std {','.join(f'{v:.3g}' if v > 0 else '1' for v in final)}.")
    return final


def not_found_message(title: str, folder: Path | str, download: bool, what: str) -> str:
    """One-sentence message for :class:`DatasetNotFoundError`.

    ``title`` is the dataset's display name, ``folder`` where it was looked for (a path or a
    short description of several), ``what`` the thing to place under a directory (e.g. "the
    official cifar-100-python folder").
    """
    reason = (
        "could not be downloaded (offline?)" if download else "downloading was disabled"
    )
    return (
        f"{title} not found in {folder} and {reason}; put {what} under a directory "
        f"and pass --data-root DIR or set {DATA_ENV}."
    )


def find_or_download(title: str, where: Path | str, what: str, find: Callable[[], _Found | None],
                     fetch: Callable[[], object], download: bool) -> _Found:
    """What ``find()`` returns; when that is ``None`` and ``download`` is true, ``fetch()`` first
    and ``find()`` again.

    Raises:
        DatasetNotFoundError: still nothing found; the message is :func:`not_found_message` of
            ``title``, ``where`` and ``what``.
    """
    found = find()
    if found is None and download:
        fetch()
        found = find()
    if found is None:
        raise DatasetNotFoundError(not_found_message(title, where, download, what))
    return found
