"""CIFAR-100 from the official python pickles (torchvision's ``cifar-100-python`` layout).

The pickles are read directly into tensors (no per-image PIL). They are opened with a
restricted unpickler that only accepts the numpy and builtin types the official files use, so
a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolbox.data.datasets import DatasetFormatError, ImageData, find_or_download

FOLDER = "cifar-100-python"
NUM_CLASSES = 100
#: The usual CIFAR-100 training-set statistics.
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)

_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals the official CIFAR pickles need."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):  # pickles written by numpy 1.x
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[bytes, Any]:
    """Read one CIFAR pickle (``encoding='bytes'``, so keys are bytes like ``b'data'``)."""
    try:
        with open(path, "rb") as f:
            entry = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DatasetFormatError(
            f"CIFAR-100 file {path} is corrupt or not a CIFAR pickle ({e})."
        ) from e
    if not isinstance(entry, dict):
        raise DatasetFormatError(f"CIFAR-100 file {path} does not hold a dict.")
    return entry


def _split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 3 x 32 x 32 uint8) and fine labels (N int64) of one split file."""
    entry = read_pickle(path)
    if b"data" not in entry or b"fine_labels" not in entry:
        raise DatasetFormatError(
            f"CIFAR-100 file {path} lacks the b'data' or b'fine_labels' key."
        )
    data = np.asarray(entry[b"data"])
    labels = np.asarray(entry[b"fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"CIFAR-100 file {path} has data of shape {data.shape} and dtype {data.dtype}, "
            "expected N x 3072 uint8."
        )
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(
            f"CIFAR-100 file {path} has {labels.size} labels for {data.shape[0]} images."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetFormatError(f"CIFAR-100 file {path} has labels outside 0..{NUM_CLASSES - 1}.")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    if not images.flags.writeable:  # e.g. unpickled from a read-only buffer
        images = images.copy()
    x = torch.from_numpy(images)
    return x, torch.from_numpy(labels)


def _present(folder: Path) -> bool:
    """Whether ``folder`` holds the ``train`` and ``test`` pickles."""
    return (folder / "train").is_file() and (folder / "test").is_file()


def _try_download(root: Path) -> None:
    """Let torchvision fetch and unpack the archive into ``root``; any failure is swallowed."""
    try:
        import torchvision.datasets

        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    except Exception:  # offline, proxy, disk full...: reported as "not found" below
        pass


def load(root: Path, download: bool = True) -> ImageData:
    """Load CIFAR-100 from ``root/cifar-100-python`` (train 50000, test 10000, 3 x 32 x 32)."""
    folder = root / FOLDER
    find_or_download("CIFAR-100", folder, "the official cifar-100-python folder",
                     lambda: folder if _present(folder) else None, lambda: _try_download(root), download)
    return ImageData.from_splits("cifar100", _split(folder / "train"), _split(folder / "test"),
                                 NUM_CLASSES, MEAN, STD, str(folder))
