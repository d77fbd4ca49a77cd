"""Your own images in torchvision's ImageFolder layout: ``DIR/<class name>/<any sub-path>/<image>``.

Any image Pillow reads (PNG, JPEG, WebP, BMP, TIFF, GIF, ...), grayscale or colour, of any size.
Files are recognised by their extension (others, and hidden files and folders, are ignored);
classes are the sorted class-folder names. Every image becomes C x N x N uint8 (see
:mod:`toolbox.data.image_decode` for resizing, cropping and zero-padding), decoded once into a
memory-mapped cache (:mod:`toolbox.data.decoded_cache`).

:func:`load_image_folders` loads one folder (or several, as one set) on its own, for given
classes, image size and channels: the building block for the training and test folders of a
run and for data that arrives later. :func:`load_imagefolder` is ``--dataset imagefolder``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toolbox.data.datasets import ImageData, resolve_data_root
from toolbox.data.decoded_cache import FileList, cache_folder, load_decoded, majority_channels
from toolbox.data.image_decode import image_extensions
from toolbox.data.manifest import Manifest, check_test_overlap, folder_manifests
from toolbox.errors import UsageError

#: Image side when ``--image-size`` is not given (the CIFAR-style backbones' input).
DEFAULT_IMAGE_SIZE = 32
NAME = "imagefolder"
LAYOUT_HINT = "pass --data-root DIR holding train/ and test/ (or val/) class folders, or --train DIR --test DIR"

log = logging.getLogger("toolbox")


@dataclass
class FolderImages:
    """Decoded images of one or more class folders (one set, folder after folder).

    ``x`` (N x C x S x S uint8, memory-mapped) and ``y`` (int64) hold the images in order;
    ``parts[i]`` are the row indices of ``folders[i]``; ``mean``/``std`` are this set's
    per-channel statistics in [0, 1] units; ``skipped`` lists unreadable images left out as
    "path (reason)"; ``built`` says whether the cache was (re)built by this call; ``manifests[i]``
    lists ``folders[i]``'s images with their content hashes.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folders: list[Path]
    parts: list[torch.Tensor]
    skipped: list[str]
    cache: Path
    built: bool
    manifests: list[Manifest] = field(default_factory=list)

    @property
    def channels(self) -> int:
        """Channels of the decoded images (1 or 3)."""
        return int(self.x.shape[1])


def class_folders(folder: Path, what: str = "image") -> list[str]:
    """The sorted class-folder names of ``folder``; a missing or class-less folder is one sentence."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"The {what} folder {folder} does not exist or is not a folder; {LAYOUT_HINT}.")
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise UsageError(f"Cannot read the {what} folder {folder} ({exc.strerror or exc}); check its permissions.") from None
    names = sorted(e.name for e in entries if not e.name.startswith(".") and _is_dir(e, folder))
    for name in names:
        if not _encodable(name):
            raise UsageError(f"The {what} folder {folder} has a class folder named '{_shown(name)}', which is not "
                             "valid UTF-8; rename it.")
    if not names:
        loose = any(e.is_file() and _is_image(e.name) for e in entries)
        detail = "holds images but no class folders" if loose else "has no class folders"
        raise UsageError(f"The {what} folder {folder} {detail}; put each class's images in its own "
                         f"sub-folder, {folder}/<class name>/ (torchvision's ImageFolder layout).")
    return names


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in image_extensions()


def _encodable(name: str) -> bool:
    """Whether ``name`` is valid UTF-8 (a name that is not holds surrogate escapes)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(path: str) -> str:
    """``path`` printable, its bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(path).decode(errors="backslashreplace")


def _is_dir(entry: os.DirEntry[str], folder: Path) -> bool:
    """``entry.is_dir()``; a symbolic link that loops (or points nowhere readable) is one sentence."""
    try:
        return entry.is_dir()
    except OSError as exc:
        raise UsageError(f"Cannot follow {_shown(entry.path)} in {folder} ({exc.strerror or exc}: a symbolic link "
                         "loop?); remove or fix the link.") from None


def _walk(folder: Path, above: frozenset[tuple[int, int]] = frozenset()) -> Iterator[os.DirEntry[str]]:
    """Image files under ``folder`` in sorted order (sub-folders followed, hidden names skipped).

    A sub-folder that is ``folder`` itself or one above it (a symbolic link loop) is one sentence."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        here = os.stat(folder)
    except OSError as exc:
        raise UsageError(f"Cannot read the folder {folder} ({exc.strerror or exc}); check its permissions.") from None
    above = above | {(here.st_dev, here.st_ino)}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if _is_dir(entry, folder):
            target = entry.stat()
            if (target.st_dev, target.st_ino) in above:
                raise UsageError(f"{_shown(entry.path)} links back to a folder above it (a symbolic link loop); "
                                 "remove the link.")
            yield from _walk(Path(entry.path), above)
        elif _is_image(entry.name) and entry.is_file():
            yield entry


def image_files(folder: Path) -> Iterator[str]:
    """Paths of the image files under ``folder`` in the order training reads a class folder (sorted,
    sub-folders followed, hidden names and non-image extensions skipped)."""
    return (entry.path for entry in _walk(Path(folder)))


def list_images(folder: Path, classes: Sequence[str], require_all_classes: bool = True,
                what: str = "image", bad_names: list[str] | None = None) -> FileList:
    """Every image of ``folder``'s class folders, labelled by its folder's position in
    ``classes``. A class folder that is not in ``classes``, an empty class folder, or (with
    ``require_all_classes``) a class without a folder is one sentence naming it. An image whose
    name is not valid UTF-8 is one sentence too, or, when ``bad_names`` is a list, left out and
    appended to it (``--skip-bad-images``)."""
    folder = Path(folder).resolve()
    found = class_folders(folder, what)
    unknown = [name for name in found if name not in classes]
    if unknown:
        raise UsageError(f"The {what} folder {folder} has a class folder {unknown[0]!r} that is not one of the "
                         f"{len(classes)} classes ({_short(classes)}); rename or remove it.")
    missing = [name for name in classes if name not in found]
    if missing and require_all_classes:
        raise UsageError(f"The {what} folder {folder} has no folder for class {missing[0]!r}; every folder "
                         f"must hold all {len(classes)} classes ({_short(classes)}).")
    if missing:
        log.warning("The %s folder %s has no images of class(es) %s.", what, folder, _short(missing))
    files = FileList()
    for name in found:
        label = list(classes).index(name)
        before = len(files)
        for entry in _walk(folder / name):
            if _encodable(entry.path):
                files.add_stat(entry.path, label, entry.stat())
            elif bad_names is not None:
                bad_names.append(entry.path)
            else:
                raise UsageError(f"The image {_shown(entry.path)} has a name that is not valid UTF-8; rename it, or "
                                 "pass --skip-bad-images to leave it out.")
        if len(files) == before:
            raise UsageError(f"The class folder {folder / name} holds no images (files Pillow reads, such as "
                             ".png, .jpg, .webp, .bmp); add images or remove the folder.")
    return files


def _short(names: Sequence[str], limit: int = 8) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``...``)."""
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def load_image_folders(folders: Sequence[str | os.PathLike[str]], classes: Sequence[str] | None = None,
                       image_size: int = DEFAULT_IMAGE_SIZE, channels: int | None = None,
                       skip_bad_images: bool = False, require_all_classes: bool = True,
                       what: str = "image", workers: int | None = None) -> FolderImages:
    """Load ``folders`` (each in ImageFolder layout) as one set of ``image_size``-square images.

    ``classes`` (default: the first folder's sorted class folders) fixes the labels; every folder
    must hold exactly those classes (or a subset, without ``require_all_classes``). ``channels``
    is 1 or 3, or ``None`` for what most images are. Unreadable images are an error naming the
    first one, or with ``skip_bad_images`` are left out and listed in ``skipped``. The decoded
    images come from (or go into) the cache folder of :func:`decoded_cache.cache_folder`.
    """
    paths = [Path(f).resolve() for f in folders]
    if not paths:
        raise UsageError("No image folder was given; pass at least one folder of class folders.")
    if image_size < 1:
        raise UsageError(f"--image-size must be at least 1, got {image_size}.")
    if channels not in (None, 1, 3):
        raise UsageError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    classes = list(classes) if classes is not None else class_folders(paths[0], what)
    files, counts, bad_names = FileList(), [], [] if skip_bad_images else None
    for path in paths:
        group = list_images(path, classes, require_all_classes, what, bad_names)
        counts.append(len(group))
        files.extend(group)
    decoded = load_decoded(files, image_size, channels, skip_bad_images, cache_folder(paths[0]),
                           _entry_name(paths, image_size, channels), f"{what}s in {_short([str(p) for p in paths], 3)}",
                           workers)
    if decoded.images.shape[0] == 0:
        raise UsageError(f"No image of {_short([str(p) for p in paths], 3)} could be decoded "
                         f"({len(decoded.skipped)} unreadable); check the files.")
    skipped = [f"{_shown(path)} (its name is not valid UTF-8)" for path in bad_names or []]
    skipped += [f"{path} ({reason})" for _, path, reason in decoded.skipped]
    if skipped:
        log.warning("Left out %d unreadable image(s) of %s (--skip-bad-images), e.g. %s.", len(skipped),
                    _short([str(p) for p in paths], 3), skipped[0])
    return FolderImages(x=torch.from_numpy(decoded.images), y=torch.from_numpy(decoded.labels), classes=classes,
                        mean=decoded.mean, std=decoded.std, folders=paths,
                        parts=_parts(counts, [i for i, _, _ in decoded.skipped]),
                        skipped=skipped,
                        cache=decoded.path, built=decoded.built,
                        manifests=folder_manifests(paths, files, counts, decoded.digests))


def folder_channels(folder: str | os.PathLike[str], classes: Sequence[str], what: str = "image") -> int:
    """The channels ``channels=None`` gives ``folder``'s images (1 when most are grayscale, else
    3; only the headers are read), so a caller can fix them before decoding and every later load
    of the folder, with the channels given, finds the same cache entry."""
    files = list_images(Path(folder), classes, what=what, bad_names=[])
    return majority_channels(files.paths, f"{what}s in {folder}")


def _entry_name(folders: list[Path], image_size: int, channels: int | None) -> str:
    """Cache entry name: the first folder's name and a hash of the folder list and the settings."""
    digest = hashlib.sha1("\n".join([*map(str, folders), str(image_size), str(channels)]).encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', folders[0].name)}-{digest}"


def _parts(counts: list[int], skipped: list[int]) -> list[torch.Tensor]:
    """Row indices of each folder in the decoded set, given each folder's file count and the
    positions of the files left out."""
    parts, row, position = [], 0, 0
    left_out = set(skipped)
    for count in counts:
        kept = sum(1 for p in range(position, position + count) if p not in left_out)
        parts.append(torch.arange(row, row + kept))
        row, position = row + kept, position + count
    return parts


def find_split_folders(root: Path) -> tuple[Path, Path]:
    """``root/train`` and ``root/test`` (or ``root/val``); missing ones are one sentence."""
    train = root / "train"
    test = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if not train.is_dir() or test is None:
        lacking = "train/" if not train.is_dir() else "test/ (or val/)"
        raise UsageError(f"The image folder root {root} has no {lacking} folder; {LAYOUT_HINT}.")
    return train, test


def load_imagefolder(data_root: str | os.PathLike[str] | None = None, train: str | None = None,
                     test: str | None = None, image_size: int | None = None, channels: int | None = None,
                     skip_bad_images: bool = False, allow_overlap: bool = False) -> ImageData:
    """``--dataset imagefolder``: training and test images from ``train``/``test`` folders, or
    from ``data_root/train`` and ``data_root/test`` (or ``val``).

    Classes are the training folder's sorted class folders; mean/std are the training images'
    statistics; the test images get the training images' channels. A test image that is also a
    training image (same content) is refused, or with ``allow_overlap`` a warning.
    """
    if (train is None) != (test is None):
        raise UsageError(f"--train and --test go together; pass both, or neither and --data-root DIR holding "
                         f"train/ and test/ (got only --{'train' if train else 'test'}).")
    if train is None:
        train_dir, test_dir = find_split_folders(resolve_data_root(data_root))
    else:
        train_dir, test_dir = Path(train).expanduser(), Path(test).expanduser()
    size = image_size or DEFAULT_IMAGE_SIZE
    train_set = load_image_folders([train_dir], None, size, channels, skip_bad_images, what="training image")
    test_set = load_image_folders([test_dir], train_set.classes, size, train_set.channels, skip_bad_images,
                                  require_all_classes=False, what="test image")
    check_test_overlap([("the training folder", train_set.manifests[0])], test_set.manifests[0], allow_overlap)
    return ImageData(name=NAME, train_x=train_set.x, train_y=train_set.y, test_x=test_set.x, test_y=test_set.y,
                     num_classes=len(train_set.classes), mean=train_set.mean, std=train_set.std,
                     source=str(train_set.folders[0].parent if train is None else train_set.folders[0]),
                     classes=train_set.classes, skipped=train_set.skipped + test_set.skipped)


def load(root: Path, download: bool = True) -> ImageData:
    """Registry entry point: ``root/train`` and ``root/test`` at the default image size."""
    return load_imagefolder(root)
