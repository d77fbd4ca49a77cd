"""Dataset folders in the exact official layouts, fabricated for tests (never real data)."""

from __future__ import annotations

import pickle
from pathlib import Path

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
