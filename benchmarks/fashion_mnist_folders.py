"""Write the real Fashion-MNIST out as PNG class folders (never commit the output).

    python benchmarks/fashion_mnist_folders.py OUT                      # OUT/train, OUT/test
    python benchmarks/fashion_mnist_folders.py OUT --shards RUN/shards.json --no-train

``OUT/train/<k>_<name>/<index>.png`` holds training image ``index`` (its position in the official
file) as the original 28 x 28 grayscale PNG; ``OUT/test`` likewise. With ``--shards`` (a run's
``shards.json``) every shard ``s`` also becomes ``OUT/shard<s>/`` (and the held-out validation
images ``OUT/validation/``), so ``--dataset imagefolder`` (or ``--shards``) sees exactly the
images the built-in ``fashion_mnist`` run trained on. Class folders are named ``0_t-shirt_top``
... ``9_ankle_boot`` so that their sorted order is the label order; ``--image-size 32`` pads them
to the built-in 32 x 32 pixels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from toolbox.data import load_dataset
from toolbox.data.fashion_mnist import PAD

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def class_folder(label: int) -> str:
    """``3_dress``: sorts in label order."""
    return f"{label}_{CLASSES[label]}"


def write_split(folder: Path, images: torch.Tensor, labels: torch.Tensor, indices: list[int]) -> None:
    """Save ``images[indices]`` (padded 1 x 32 x 32 uint8) as unpadded 28 x 28 PNGs under ``folder``."""
    for label in range(len(CLASSES)):
        (folder / class_folder(label)).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i in indices:
        pixels = images[i, 0, PAD:-PAD, PAD:-PAD].numpy()
        Image.fromarray(pixels).save(folder / class_folder(int(labels[i])) / f"{i:05d}.png")
    print(f"{folder}: {len(indices)} PNGs in {time.perf_counter() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="Folder to write into.")
    parser.add_argument("--shards", type=Path, help="A run's shards.json: one folder per shard.")
    parser.add_argument("--no-train", action="store_true", help="Skip OUT/train (e.g. with --shards).")
    parser.add_argument("--no-test", action="store_true", help="Skip OUT/test.")
    parser.add_argument("--data-root", help="Where Fashion-MNIST is (default: the usual places).")
    args = parser.parse_args()
    data = load_dataset("fashion_mnist", args.data_root, download=False)
    if not args.no_train:
        write_split(args.out / "train", data.train_x, data.train_y, list(range(len(data.train_y))))
    if not args.no_test:
        write_split(args.out / "test", data.test_x, data.test_y, list(range(len(data.test_y))))
    if args.shards:
        record = json.loads(args.shards.read_text())
        for s, shard in enumerate(record["shards"], start=1):
            write_split(args.out / f"shard{s}", data.train_x, data.train_y, shard)
        if record.get("validation"):
            write_split(args.out / "validation", data.train_x, data.train_y, record["validation"])


if __name__ == "__main__":
    main()
