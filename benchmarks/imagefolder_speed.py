"""The decoded cache of ``--dataset imagefolder`` against torchvision ``ImageFolder`` + ``DataLoader``.

    python benchmarks/fashion_mnist_folders.py /tmp/fm          # 70,000 PNGs: train/ and test/
    python benchmarks/imagefolder_speed.py /tmp/fm

Measures, on ``ROOT/train`` (and ``ROOT/test``):

1. the first run's decode (the cache builder, parallel processes, into a fresh cache folder) in
   images/s, against one epoch of torchvision's loader (2 workers, the same augmentation: zero
   pad 28 -> 32, random crop with 4-pixel padding, horizontal flip, to tensor, normalize);
2. a second run's time until the data is ready (a fresh process opening the cache);
3. an epoch's data cost: :class:`toolbox.data.BatchLoader` over the memory map against the
   torchvision epoch;
4. RssAnon growth (anonymous memory: not the memory map's file pages) of a training-like loop
   (a tiny CNN, one epoch) on a 10,000-image folder and on a 70,000-image folder (symlinks to
   the PNGs), each in a fresh process; for reference also with the images copied into RAM.

Prints one Markdown table. CPU-heavy for a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from toolbox.data import BatchLoader
from toolbox.data.decoded_cache import CACHE_ENV
from toolbox.data.imagefolder import load_image_folders, load_imagefolder

BATCH = 128


def rss_anon_mb() -> float:
    """This process's anonymous resident memory (RssAnon of /proc/self/status) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def torchvision_epoch(train: Path, workers: int = 2) -> tuple[int, float]:
    """Images and seconds of one epoch of ImageFolder + DataLoader with the run's augmentation."""
    from PIL import Image
    from torchvision import datasets, transforms

    def gray(path: str) -> Image.Image:
        with open(path, "rb") as f:
            return Image.open(f).convert("L")

    augment = transforms.Compose([transforms.CenterCrop(32), transforms.RandomCrop(32, padding=4),
                                  transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                  transforms.Normalize((0.2190,), (0.3318,))])
    dataset = datasets.ImageFolder(str(train), transform=augment, loader=gray)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
    started = time.perf_counter()
    count = sum(x.shape[0] for x, _ in loader)
    return count, time.perf_counter() - started


def cache_epoch(x: torch.Tensor, y: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                threads: int) -> float:
    """Seconds of one epoch of BatchLoader batches (gather, crop + flip, normalize) from ``x``,
    with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    loader = BatchLoader(x, y, None, BATCH, mean, std, train=True, seed=0)
    started = time.perf_counter()
    for _ in loader:
        pass
    torch.set_num_threads(before)
    return time.perf_counter() - started


def second_run_seconds(root: Path, cache: Path) -> tuple[float, float]:
    """(seconds until the data is ready inside the process, the process's wall seconds)."""
    code = ("import time, sys; from toolbox.data.imagefolder import load_imagefolder; t = time.perf_counter(); "
            "d = load_imagefolder(sys.argv[1]); print(time.perf_counter() - t, d.train_x.shape[0] + d.test_x.shape[0])")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(root)], env={**os.environ, CACHE_ENV: str(cache)},
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[0]), time.perf_counter() - started


def symlink_folder(target: Path, sources: list[Path], per_class: int | None) -> Path:
    """``target/<class>/`` with symlinks to the first ``per_class`` images of each class of ``sources``."""
    for source in sources:
        for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
            (target / class_dir.name).mkdir(parents=True, exist_ok=True)
            for path in sorted(class_dir.iterdir())[:per_class]:
                link = target / class_dir.name / f"{source.name}-{path.name}"
                if not link.exists():
                    link.symlink_to(path)
    return target


def rss_loop(folder: Path, in_memory: bool) -> None:
    """Child process: RssAnon before loading ``folder`` and after one training-like epoch (JSON)."""
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                torch.nn.Flatten(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model(torch.zeros(2, 1, 32, 32)).sum().backward()  # allocate everything a step needs once
    before = rss_anon_mb()
    images = load_image_folders([folder])
    x = images.x.clone() if in_memory else images.x
    loader = BatchLoader(x, images.y, None, BATCH, images.mean, images.std, train=True, seed=0)
    for xb, yb in loader:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    print(json.dumps({"images": int(x.shape[0]), "before": before, "after": rss_anon_mb()}))


def rss_growth(folder: Path, cache: Path, in_memory: bool) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--rss-loop", str(folder), *(["--in-memory"] if in_memory else [])],
                          env={**os.environ, CACHE_ENV: str(cache)}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", help="Folder holding train/ and test/ (PNG class folders).")
    parser.add_argument("--rss-loop", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_loop:
        rss_loop(args.rss_loop, args.in_memory)
        return
    root = args.root.resolve()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="toolbox-cache-bench-") as tmp:
        cache = Path(tmp) / "cache"
        os.environ[CACHE_ENV] = str(cache)
        started = time.perf_counter()
        train = load_image_folders([root / "train"])
        decode = time.perf_counter() - started
        n = train.x.shape[0]
        rows.append(("first run: decode of train/ into the cache (images/s)", f"{n / decode:,.0f} ({decode:.1f} s)"))
        count, tv_seconds = torchvision_epoch(root / "train")
        rows.append(("torchvision ImageFolder + DataLoader (2 workers), one epoch (images/s)",
                     f"{count / tv_seconds:,.0f} ({tv_seconds:.1f} s)"))
        load_imagefolder(root)  # the test set's cache too
        ready, wall = second_run_seconds(root, cache)
        rows.append(("second run: data ready (train + test, fresh process)", f"{ready:.2f} s (process {wall:.1f} s)"))
        for threads in (1, torch.get_num_threads()):
            ours = cache_epoch(train.x, train.y, train.mean, train.std, threads)
            rows.append((f"one epoch's data from the cache (BatchLoader over the memory map, {threads} torch "
                         f"thread{'s' if threads > 1 else ''})", f"{ours:.2f} s ({tv_seconds / ours:.0f}x below torchvision)"))
        small = symlink_folder(Path(tmp) / "small", [root / "train"], 1000)
        large = symlink_folder(Path(tmp) / "large", [root / "train", root / "test"], None)
        for folder in (small, large):
            load_image_folders([folder])  # build the caches outside the measured processes
        for in_memory in (False, True):
            a, b = rss_growth(small, cache, in_memory), rss_growth(large, cache, in_memory)
            grow_a, grow_b = a["after"] - a["before"], b["after"] - b["before"]
            label = "images copied into RAM (reference)" if in_memory else "memory-mapped cache"
            rows.append((f"RssAnon growth, training-like epoch, {label}: {a['images']:,} -> {b['images']:,} images",
                         f"{grow_a:.1f} MB -> {grow_b:.1f} MB (+{grow_b - grow_a:.1f} MB)"))
    print(f"\n{n:,} training PNGs in {root}; {os.cpu_count()} CPU cores; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
