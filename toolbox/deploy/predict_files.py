"""``toolbox predict``'s work: the images a list of paths names, their predictions, the CSV.

A folder is walked as training walks a class folder (:func:`toolbox.data.imagefolder.image_files`);
when its sub-folders are all class names of the model it is labelled by them (ImageFolder layout),
so the top-1 over it is ``toolbox eval``'s on the same images. A file named on its own is tried
whatever its extension. The CSV has one row per image: ``path``, ``label`` (the class folder, or
empty), ``top{i}_class`` and ``top{i}_probability`` for i = 1..k, and ``error`` (why an image could
not be read; its other columns are then empty).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from toolbox.data.imagefolder import image_files
from toolbox.deploy.predictor import Prediction, Predictor
from toolbox.errors import UsageError
from toolbox.storage.atomic import atomic_write_text

#: The header of a CSV ``toolbox predict`` wrote (only such a file may be overwritten by ``--out``).
_OWN_HEADER = re.compile(r"path,label,(top\d+_class,top\d+_probability,)+error")


@dataclass
class ImageFile:
    """One image to predict: its path and the index of its class folder in the model's classes."""

    path: str
    label: int | None = None


def _class_subfolders(folder: Path) -> list[str]:
    """The non-hidden sub-folder names of ``folder``, sorted."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise UsageError(f"Cannot read the folder {folder} ({exc.strerror or exc}); check its permissions.") from None


def collect_images(paths: Sequence[str | os.PathLike[str]], classes: Sequence[str]) -> list[ImageFile]:
    """The images ``paths`` name, in order: a file itself, a folder's image files (labelled when its
    sub-folders are all among ``classes``); a path that does not exist is one sentence."""
    found: list[ImageFile] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            names = _class_subfolders(path)
            if names and all(name in classes for name in names):
                for name in names:
                    label = list(classes).index(name)
                    found += [ImageFile(file, label) for file in image_files(path / name)]
            else:
                found += [ImageFile(file) for file in image_files(path)]
        elif path.exists():
            found.append(ImageFile(os.fspath(given)))
        else:
            raise UsageError(f"{given} does not exist; pass image files or folders of images.")
    return found


def top1(images: Sequence[ImageFile], predictions: Sequence[Prediction]) -> tuple[float, int] | None:
    """``(top-1 percent, images counted)`` over the labelled, readable images; ``None`` without any."""
    pairs = [(image.label, p.indices[0]) for image, p in zip(images, predictions)
             if image.label is not None and p.error is None]
    if not pairs:
        return None
    return 100.0 * sum(label == guess for label, guess in pairs) / len(pairs), len(pairs)


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a folder or a file ``toolbox predict`` did not write."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; pass the path of a CSV file, e.g. --out {out / 'preds.csv'}.")
    if out.exists():
        try:
            with open(out, encoding="utf-8", errors="replace") as f:
                first = f.readline().strip()
        except OSError:
            first = ""
        if not _OWN_HEADER.fullmatch(first):
            raise UsageError(f"--out {out} exists and was not written by toolbox predict; pass another file name "
                             "or move it away.")


def shown(path: str) -> str:
    """``path`` printable (bytes that are not UTF-8 as ``\\xNN``)."""
    return os.fsencode(path).decode(errors="backslashreplace")


def predictions_csv(images: Sequence[ImageFile], predictions: Sequence[Prediction], classes: Sequence[str],
                    top_k: int) -> str:
    """The CSV text of the module docstring."""
    k = min(top_k, len(classes))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", *[f"top{i}_{what}" for i in range(1, k + 1)
                                        for what in ("class", "probability")], "error"])
    for image, p in zip(images, predictions):
        cells = [value for c, prob in zip(p.classes, p.probabilities) for value in (c, f"{prob:.6f}")]
        cells += [""] * (2 * k - len(cells))
        label = classes[image.label] if image.label is not None else ""
        writer.writerow([shown(image.path), label, *cells, p.error or ""])
    return buffer.getvalue()


def predict_files(predictor: Predictor, paths: Sequence[str | os.PathLike[str]], top_k: int = 1,
                  out: Path | None = None) -> tuple[list[ImageFile], list[Prediction]]:
    """Predict every image ``paths`` names (unreadable ones get an ``error``), writing the CSV to
    ``out`` when given (checked first: :func:`check_out`)."""
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}.")
    if out is not None:
        check_out(out)
    images = collect_images(paths, predictor.classes)
    if not images:
        raise UsageError(f"No image files found in {', '.join(map(str, paths))[:200]}; pass image files or folders "
                         "holding .png, .jpg, .webp, ... files.")
    predictions = predictor.predict_many([image.path for image in images], top_k)
    if out is not None:
        atomic_write_text(out, predictions_csv(images, predictions, predictor.classes, top_k))
    return images, predictions
