"""The paper's pipeline on Fashion-MNIST PNG folders (``--shards`` then ``toolbox step``) against
the built-in ``fashion_mnist`` dataset with the same shard images, seed, padding and normalization.

    python benchmarks/folders_vs_builtin.py OUT [--steps 3 --per-class 125 --epochs 3]

1. ``toolbox run --dataset fashion_mnist --open-ended true`` (every step ends with its sparsify
   phase, as a ``--shards`` run's do) writes ``shards.json``;
2. those shards and the test set are written as PNG folders (``fashion_mnist_folders.py``);
3. ``toolbox run --shards`` on all but the last folder, the earlier folders are deleted, and
   ``toolbox step`` adds the last one;
4. top-1 per step of both runs, side by side (a markdown table on stdout).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def toolbox(*args: str) -> None:
    """Run one ``toolbox`` command; stop on failure."""
    subprocess.run([sys.executable, "-m", "toolbox.cli", *args], check=True)


def top1(run: Path) -> list[float]:
    return [step["top1"] for step in json.loads((run / "results.json").read_text())["steps"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=125)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    common = ["--plugins", "sst,aod,msl", "--arch", "cifar_resnet20", "--epochs", str(args.epochs),
              "--batch-size", "128", "--lr", "0.05", "--seed", "0", "--device", "cpu"]
    builtin, folders, images = args.out / "builtin", args.out / "folders", args.out / "images"
    if not (builtin / "results.json").exists():
        toolbox("run", "--dataset", "fashion_mnist", "--steps", str(args.steps), "--per-class", str(args.per_class),
                "--open-ended", "true", "--out", str(builtin), *common)
    if not (images / "test").exists():
        subprocess.run([sys.executable, str(HERE / "fashion_mnist_folders.py"), str(images), "--shards",
                        str(builtin / "shards.json"), "--no-train"], check=True)
    shards = [str(images / f"shard{s + 1}") for s in range(args.steps)]
    arrived = images / "arrived"
    if not arrived.exists():
        shutil.copytree(shards[-1], arrived)
    if not (folders / "results.json").exists():
        toolbox("run", "--shards", ",".join(shards[:-1]), "--test", str(images / "test"), "--image-size", "32",
                "--mean", "0.2190", "--std", "0.3318", "--out", str(folders), *common)
    for shard in shards:
        shutil.rmtree(shard, ignore_errors=True)  # toolbox step must not need them
    if len(top1(folders)) < args.steps:
        toolbox("step", str(folders), "--data", str(arrived))
    a, b = top1(builtin), top1(folders)
    print("| step | built-in fashion_mnist | PNG folders (--shards, then toolbox step) | difference |")
    print("|---:|---:|---:|---:|")
    for k, (x, y) in enumerate(zip(a, b), start=1):
        print(f"| {k} | {x:.2f} | {y:.2f} | {y - x:+.2f} |")


if __name__ == "__main__":
    main()
