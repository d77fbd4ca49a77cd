"""Dataset folders in the exact official layouts and image folders, fabricated for tests (never real data)."""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_cifar100(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> dict[str, np.ndarray]:
    """A ``cifar-100-python/`` folder like torchvision's: train/test/meta pickles with bytes keys."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        labels = [c for c in range(100) for _ in range(per)]
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        entry = {
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": labels,
            b"coarse_labels": [c // 5 for c in labels],
            b"data": data,
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        arrays[split] = data
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return arrays


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of unsigned bytes: magic (0, 0, 0x08, ndim), big-endian dims, the data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, gz: bool = True, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    """The four official Fashion-MNIST idx files (random 28 x 28 images), gzipped or not, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


def write_image(path: Path, pixels: np.ndarray, **save: Any) -> Path:
    """Save ``pixels`` (H x W uint8 grayscale, H x W x 3 RGB, or uint16 H x W) with Pillow; the
    format follows the suffix."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


def write_image_folder(root: Path, classes: Sequence[str] = ("ant", "bee"), per_class: int = 3,
                       size: tuple[int, int] = (28, 28), rgb: bool = False, suffix: str = ".png",
                       seed: int = 0) -> list[Path]:
    """``root/<class>/img<i><suffix>``: random images of ``size`` (H, W), RGB or grayscale.
    JPEGs are saved at quality 95; returns the paths in sorted (label, name) order."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in classes:
        for i in range(per_class):
            shape = (*size, 3) if rgb else size
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            extra = {"quality": 95} if suffix.lower() in (".jpg", ".jpeg") else {}
            paths.append(write_image(root / name / f"img{i}{suffix}", pixels, **extra))
    return paths


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its bytes (a download that stopped half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path
