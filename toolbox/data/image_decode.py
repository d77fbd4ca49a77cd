"""Decode one image file into a fixed-size uint8 C x N x N array (the work of the cache builder).

The geometry is torchvision's ``Resize(N)`` + ``CenterCrop(N)`` for images whose shorter side
is larger than N (bilinear resampling), and ``CenterCrop(N)`` alone otherwise: a side shorter
than N is zero-padded (``(N - s) // 2`` pixels before, the rest after), a longer one is cropped
around its centre. A 28 x 28 Fashion-MNIST PNG at N = 32 thus gets 2 zero pixels on every side,
exactly as the built-in ``fashion_mnist`` dataset. Colour is Pillow's conversion to mode ``L``
(one channel) or ``RGB`` (three; alpha is dropped), 16- and 32-bit grayscale scaled from 0..65535.
:func:`decode_image` opens a file and :func:`image_pixels` does the rest, for a file or an image
already in memory (the predictor's inputs, :mod:`toolbox.deploy.predictor`). This module imports
only numpy and Pillow, so worker processes start fast.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

#: Pillow formats it can only identify, or decode only with external programs: not images here.
_NOT_DECODABLE = {".bufr", ".grib", ".h5", ".hdf", ".mpeg", ".mpg", ".eps", ".ps", ".wmf", ".emf"}

#: Pillow's grayscale modes (everything else is converted as colour).
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@functools.cache
def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) of every format Pillow can open and decode."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and ext not in _NOT_DECODABLE)


def native_channels(path: str) -> int | None:
    """1 for a grayscale file, 3 for colour, ``None`` when the header cannot be read (cheap:
    only the header is parsed)."""
    try:
        with Image.open(path) as image:
            return 1 if image.mode in GRAY_MODES else 3
    except Exception:  # noqa: BLE001 - reported with its reason by the decoding pass
        return None


def _eight_bit(image: Image.Image, channels: int) -> Image.Image:
    """``image`` in mode L (``channels`` 1) or RGB (3). 16- and 32-bit grayscale is scaled from
    0..65535 to 0..255 (Pillow's own conversion would clip it)."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode.startswith("I") and image.mode != "I;8":
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))
    return image if image.mode == mode else image.convert(mode)


def _resized(image: Image.Image, size: int) -> Image.Image:
    """``image`` with its shorter side resized to ``size`` (only when it is longer), as
    torchvision's ``Resize(size)`` computes the other side."""
    w, h = image.size
    if min(w, h) <= size:
        return image
    if w <= h:
        return image.resize((size, int(size * h / w)), Image.Resampling.BILINEAR)
    return image.resize((int(size * w / h), size), Image.Resampling.BILINEAR)


def _placement(have: int, size: int) -> tuple[slice, slice]:
    """(source, target) slices of one axis: centre crop (``have`` > ``size``) or centre pad."""
    if have >= size:
        start = int(round((have - size) / 2.0))
        return slice(start, start + size), slice(0, size)
    start = (size - have) // 2
    return slice(0, have), slice(start, start + have)


def decode_image(path: str | io.BytesIO, size: int, channels: int) -> np.ndarray:
    """The image at ``path`` (or in an open binary file) as a ``channels`` x ``size`` x ``size`` uint8 array (see the module
    docstring for the geometry). Raises whatever Pillow raises for an unreadable file."""
    with Image.open(path) as image:
        if image.format == "JPEG":  # decode at a reduced scale that still covers size x size
            image.draft("L" if channels == 1 else "RGB", (size, size))
        return image_pixels(image, size, channels)


def image_pixels(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """An opened or in-memory Pillow image as a ``channels`` x ``size`` x ``size`` uint8 array: the
    colour conversion and the geometry of the module docstring (what :func:`decode_image` does after
    opening the file)."""
    pixels = np.asarray(_resized(_eight_bit(image, channels), size))
    h, w = pixels.shape[:2]
    (src_y, dst_y), (src_x, dst_x) = _placement(h, size), _placement(w, size)
    out = np.zeros((channels, size, size), dtype=np.uint8)
    if channels == 1:
        out[0, dst_y, dst_x] = pixels[src_y, src_x]
    else:
        out[:, dst_y, dst_x] = pixels[src_y, src_x].transpose(2, 0, 1)
    return out


def image_from_array(array: np.ndarray) -> Image.Image:
    """A uint8 H x W (grey), H x W x 1, H x W x 3 (RGB) or H x W x 4 (RGBA) array as a Pillow image;
    anything else raises ``ValueError`` naming its shape or dtype."""
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))  # mode L, RGB or RGBA
    raise ValueError(f"an image array must be H x W or H x W x C with C 1, 3 or 4, got shape {tuple(array.shape)}")


@dataclass
class DecodedChunk:
    """What a worker returns for a run of files: the good images in order, their positions in
    the chunk, exact per-channel sums of pixel values and of their squares (for the
    statistics), ``(position, reason)`` of the bad files, and every file's content hash
    (:data:`DIGEST_BYTES` bytes each, in order; zeros for a file that could not be read)."""

    images: np.ndarray
    kept: list[int]
    pixel_sum: np.ndarray
    pixel_sq_sum: np.ndarray
    bad: list[tuple[int, str]] = field(default_factory=list)
    digests: bytes = b""


#: Bytes of a file's content hash (BLAKE2b), as the decoded cache stores it.
DIGEST_BYTES = 16
NO_DIGEST = bytes(DIGEST_BYTES)


def decode_chunk(paths: list[str], size: int, channels: int) -> DecodedChunk:
    """Decode ``paths`` (the worker's task), hashing each file's bytes as they are read (one
    read per file): unreadable files are reported, not raised."""
    images = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    kept: list[int] = []
    bad: list[tuple[int, str]] = []
    digests = bytearray()
    for position, path in enumerate(paths):
        buffer = None
        try:
            with open(path, "rb") as f:
                buffer = io.BytesIO(f.read())
            digests += hashlib.blake2b(buffer.getbuffer(), digest_size=DIGEST_BYTES).digest()
            images[len(kept)] = decode_image(buffer, size, channels)
        except Exception as exc:  # noqa: BLE001 - any read or decoder failure is a bad image
            if len(digests) == position * DIGEST_BYTES:
                digests += NO_DIGEST
            reason = f"{type(exc).__name__}: {exc}".strip()
            bad.append((position, reason.replace(repr(buffer), repr(path)) if buffer else reason))
            continue
        kept.append(position)
    good = images[: len(kept)]
    per_channel = good.transpose(1, 0, 2, 3).reshape(channels, -1)
    return DecodedChunk(images=good, kept=kept, pixel_sum=per_channel.sum(axis=1, dtype=np.uint64),
                        pixel_sq_sum=np.square(per_channel, dtype=np.uint32).sum(axis=1, dtype=np.uint64),
                        bad=bad, digests=bytes(digests))
