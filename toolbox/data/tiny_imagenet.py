"""Tiny ImageNet (``tiny-imagenet-200``): 200 classes of 64 x 64 RGB images.

The JPEGs are decoded with PIL once, into uint8 tensors that are cached as
``tiny-imagenet-200/toolbox-decoded-v1.pt`` (or under ``~/.cache/toolbox/decoded`` when the
dataset folder is read-only), so later loads take a second. The official test split has no
labels, so the labelled ``val`` split serves as the test set. Class indices follow the sorted
wnids (the order ``torchvision.datasets.ImageFolder`` would give the ``train`` folder).
Delete the cache file after changing images in place; it is keyed on ``wnids.txt`` and
``val/val_annotations.txt`` only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from toolbox.data.datasets import DatasetFormatError, ImageData, find_or_download

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CACHE_NAME = "toolbox-decoded-v1.pt"
SIZE = 64
#: The usual Tiny ImageNet training-set statistics.
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2302, 0.2265, 0.2262)

log = logging.getLogger(__name__)


def _present(folder: Path) -> bool:
    """Whether ``folder`` holds ``wnids.txt``, ``train/`` and the val annotations."""
    return (
        (folder / "wnids.txt").is_file()
        and (folder / "train").is_dir()
        and (folder / "val" / "val_annotations.txt").is_file()
    )


def read_wnids(folder: Path) -> list[str]:
    """The class ids (wnids) in label order: sorted."""
    lines = (folder / "wnids.txt").read_text().splitlines()
    wnids = sorted({line.strip() for line in lines if line.strip()})
    if not wnids:
        raise DatasetFormatError(f"Tiny ImageNet file {folder / 'wnids.txt'} lists no classes.")
    return wnids


def _train_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise DatasetFormatError(f"Tiny ImageNet class folder {images} is missing.")
        names = sorted(n for n in os.listdir(images) if n.lower().endswith((".jpeg", ".jpg")))
        paths += [images / n for n in names]
        labels += [label] * len(names)
    return paths, labels


def _val_files(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    index = {wnid: i for i, wnid in enumerate(wnids)}
    annotations = folder / "val" / "val_annotations.txt"
    paths: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetFormatError(
                f"Tiny ImageNet file {annotations} line {number} does not name an image "
                "and a known wnid."
            )
        paths.append(folder / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return paths, labels


def _decode_into(out: np.ndarray, i: int, path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except OSError as e:
        raise DatasetFormatError(f"Tiny ImageNet image {path} could not be decoded ({e}).") from e
    if rgb.size != (SIZE, SIZE):
        raise DatasetFormatError(
            f"Tiny ImageNet image {path} is {rgb.size[0]}x{rgb.size[1]}, expected {SIZE}x{SIZE}."
        )
    out[i] = np.asarray(rgb).transpose(2, 0, 1)


def decode_images(paths: list[Path]) -> torch.Tensor:
    """Decode JPEGs (grayscale ones converted to RGB) into an N x 3 x 64 x 64 uint8 tensor."""
    out = np.empty((len(paths), 3, SIZE, SIZE), dtype=np.uint8)
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        list(pool.map(lambda item: _decode_into(out, item[0], item[1]), enumerate(paths)))
    return torch.from_numpy(out)


def _cache_key(folder: Path, wnids: list[str]) -> str:
    stat = (folder / "val" / "val_annotations.txt").stat()
    return f"v1|{stat.st_size}|{stat.st_mtime_ns}|{','.join(wnids)}"


def cache_paths(folder: Path) -> list[Path]:
    """Candidate cache files: inside the dataset folder, then in the user's cache directory."""
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    user_cache = Path.home() / ".cache" / "toolbox" / "decoded" / f"{FOLDER}-{digest}.pt"
    return [folder / CACHE_NAME, user_cache]


def _load_cache(folder: Path, key: str) -> dict[str, torch.Tensor] | None:
    for path in cache_paths(folder):
        if not path.is_file():
            continue
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or foreign file: decode again
            log.warning("ignoring unreadable Tiny ImageNet cache %s (%s)", path, e)
            continue
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached
    return None


def _save_cache(folder: Path, tensors: dict[str, object]) -> None:
    for path in cache_paths(folder):
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(tensors, tmp)
            os.replace(tmp, path)
            return
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("could not write Tiny ImageNet cache %s (%s)", path, e)


def _try_download(root: Path) -> None:
    """Fetch and unpack the official zip into ``root``; any failure is swallowed."""
    archive = root / (FOLDER + ".zip")
    partial = archive.with_name(archive.name + ".part")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(URL, timeout=30) as response, open(partial, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
        os.replace(partial, archive)
        with zipfile.ZipFile(archive) as z:
            z.extractall(root)
        archive.unlink()
    except Exception as e:  # offline, disk full, bad zip: reported as "not found"
        log.warning("Tiny ImageNet download failed (%s)", e)
        partial.unlink(missing_ok=True)


def load(root: Path, download: bool = True) -> ImageData:
    """Load Tiny ImageNet from ``root/tiny-imagenet-200`` (train 100000, test = val 10000)."""
    folder = root / FOLDER
    find_or_download("Tiny ImageNet", folder, "the official tiny-imagenet-200 folder",
                     lambda: folder if _present(folder) else None, lambda: _try_download(root), download)
    wnids = read_wnids(folder)
    key = _cache_key(folder, wnids)
    cached = _load_cache(folder, key)
    if cached is None:
        train_paths, train_labels = _train_files(folder, wnids)
        val_paths, val_labels = _val_files(folder, wnids)
        cached = {
            "key": key,
            "train_x": decode_images(train_paths),
            "train_y": torch.tensor(train_labels, dtype=torch.int64),
            "test_x": decode_images(val_paths),
            "test_y": torch.tensor(val_labels, dtype=torch.int64),
        }
        _save_cache(folder, cached)
    return ImageData.from_splits("tiny_imagenet", (cached["train_x"], cached["train_y"]),
                                 (cached["test_x"], cached["test_y"]), len(wnids), MEAN, STD, str(folder))
