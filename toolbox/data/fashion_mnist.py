"""Fashion-MNIST from the four official idx files, padded to 1 x 32 x 32.

The 28 x 28 images get 2 zero pixels on every side so that CIFAR-style backbones run
unchanged. Files may be gzipped or not and are searched, in order, in ``<root>/fashion_mnist``,
``<root>/FashionMNIST/raw`` (torchvision's layout), ``<root>`` and the system folders:
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package), or the
folders listed in ``$TOOLBOX_FASHION_MNIST_DIRS`` (separated like ``PATH``; set but empty: none).
When they are nowhere, :func:`load` downloads them into ``<root>/FashionMNIST/raw`` with
torchvision's downloader, which verifies their MD5 checksums.
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import zlib
from pathlib import Path

import numpy as np
import torch

from toolbox.data.datasets import DatasetFormatError, ImageData, find_or_download

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable replacing :data:`SYSTEM_DIR` by a ``PATH``-style list of folders.
SYSTEM_DIRS_ENV = "TOOLBOX_FASHION_MNIST_DIRS"
#: Seconds a download may wait for a server before giving up (an offline machine fails at once).
DOWNLOAD_TIMEOUT = 20.0
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10
PAD = 2
#: Statistics of the 60000 *padded* 32 x 32 training images in [0, 1] units (the unpadded
#: 28 x 28 images have mean 0.2860 and std 0.3530; the zero border lowers both).
MEAN = (0.2190,)
STD = (0.3318,)

_IDX_UBYTE = 0x08


log = logging.getLogger("toolbox")


def system_dirs() -> list[Path]:
    """System folders searched after the data root: ``$TOOLBOX_FASHION_MNIST_DIRS`` when it is
    set (an empty value means none), else :data:`SYSTEM_DIR`."""
    listed = os.environ.get(SYSTEM_DIRS_ENV)
    if listed is None:
        return [SYSTEM_DIR]
    return [Path(part).expanduser() for part in listed.split(os.pathsep) if part.strip()]


def search_dirs(root: Path) -> list[Path]:
    """Directories searched for the idx files, in order of preference."""
    return [root / "fashion_mnist", root / "FashionMNIST" / "raw", root, *system_dirs()]


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def find_files(root: Path) -> dict[str, Path] | None:
    """The four idx files from the first directory that holds all of them, or ``None``."""
    for folder in search_dirs(root):
        found = {key: _find(folder, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file of unsigned bytes (gzipped or not) into a numpy array.

    The header is two zero bytes, the type code (0x08 = ubyte), the number of dimensions and
    one big-endian int32 per dimension; a bad header or a wrong payload size raises
    :class:`DatasetFormatError`.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(
            f"Fashion-MNIST file {path} could not be read or unzipped ({e})."
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] == 0:
        raise DatasetFormatError(
            f"Fashion-MNIST file {path} is not an idx file of unsigned bytes (bad magic number)."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"Fashion-MNIST file {path} is truncated inside its header.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"Fashion-MNIST file {path} holds {len(raw) - header} bytes of data but its header "
            f"{dims} says {expected}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _images(path: Path) -> torch.Tensor:
    array = read_idx(path)
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise DatasetFormatError(
            f"Fashion-MNIST file {path} has shape {array.shape}, expected N x 28 x 28."
        )
    n = array.shape[0]
    size = 28 + 2 * PAD
    out = torch.zeros((n, 1, size, size), dtype=torch.uint8)
    out[:, 0, PAD : PAD + 28, PAD : PAD + 28] = torch.from_numpy(array.copy())
    return out


def _labels(path: Path, count: int) -> torch.Tensor:
    array = read_idx(path)
    if array.shape != (count,):
        raise DatasetFormatError(
            f"Fashion-MNIST file {path} has shape {array.shape}, expected ({count},) labels."
        )
    if count and array.max() >= NUM_CLASSES:
        raise DatasetFormatError(
            f"Fashion-MNIST file {path} has labels outside 0..{NUM_CLASSES - 1}."
        )
    return torch.from_numpy(array.astype(np.int64))


def fetch_files(root: Path) -> str | None:
    """Fetch the four files into ``root/FashionMNIST/raw`` with torchvision's downloader (MD5
    checksums verified); return ``None`` on success, else why it failed (offline, bad checksum...).

    A file that fails its checksum is deleted, so that a later run does not mistake it for data.
    """
    import torchvision.datasets

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        return None
    except Exception as exc:  # offline, refused, corrupt: the caller decides what to do
        _remove_corrupt(root / "FashionMNIST" / "raw")
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return " ".join(lines)[:300] or type(exc).__name__
    finally:
        socket.setdefaulttimeout(previous)


def _remove_corrupt(folder: Path) -> None:
    """Delete downloaded archives whose MD5 differs from torchvision's, with what they unpacked to."""
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import check_integrity

    for filename, md5 in getattr(FashionMNIST, "resources", []):
        archive = folder / filename
        if archive.is_file() and not check_integrity(str(archive), md5):
            archive.unlink()
            (folder / archive.stem).unlink(missing_ok=True)


def _download(root: Path) -> None:
    """:func:`fetch_files`, logging why it failed (a failure is reported as "not found" later)."""
    problem = fetch_files(root)
    if problem is not None:
        log.warning("Fashion-MNIST could not be downloaded into %s: %s", root / "FashionMNIST" / "raw", problem)


def load(root: Path, download: bool = True) -> ImageData:
    """Load Fashion-MNIST (train 60000, test 10000, 1 x 32 x 32 after padding)."""
    elsewhere = ", ".join(str(p) for p in [root / "FashionMNIST" / "raw", root, *system_dirs()])
    files = find_or_download(
        "Fashion-MNIST",
        f"{root / 'fashion_mnist'} (nor {elsewhere})",
        "the four official idx files (gzipped or not) in a fashion_mnist folder",
        lambda: find_files(root),
        lambda: _download(root),
        download,
    )
    train_x = _images(files["train_x"])
    test_x = _images(files["test_x"])
    return ImageData.from_splits(
        "fashion_mnist",
        (train_x, _labels(files["train_y"], train_x.shape[0])),
        (test_x, _labels(files["test_y"], test_x.shape[0])),
        NUM_CLASSES, MEAN, STD, str(files["train_x"].parent),
    )
