"""A deterministic, learnable dataset of drawn shapes and textures, generated in memory.

Ten classes that differ in shape and texture, never in colour: disc, ring, square, triangle,
plus sign, diagonal cross, and four stripe textures (coarse and fine, near-horizontal and
near-vertical). Every image (3 x 16 x 16, uint8) draws its own position, scale, rotation
(shapes: any angle; stripes: within 20 degrees of their orientation), phase, foreground and
background colours (foreground brighter by at least 60 grey levels) and per-pixel Gaussian noise, so a small CNN
learns the classes within a few epochs but not at once, and colour or mean brightness tell nothing.

:func:`generate` takes the number of images per class, so a run can ask for as many as its shards
need (:func:`sizes_for_run`); the test set comes from its own seed, so it does not change when
only the training set grows. Everything comes from fixed-seed ``torch.Generator`` s, independent
of the global RNG (~0.2 s for 6000 images).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from toolbox.data.datasets import ImageData

SEED = 20240601
TEST_SEED = SEED + 1
NUM_CLASSES = 10
IMAGE_SIZE = 16
CHANNELS = 3
TRAIN_PER_CLASS = 60
TEST_PER_CLASS = 20
MAX_TRAIN_PER_CLASS = 2000  # what a run may ask for (a bigger request fails in the shard split)
NOISE = 16.0  # per-pixel noise std in grey levels
MIN_CONTRAST = 60.0  # grey levels between foreground and background, at least
EDGE = 0.05  # width of the anti-aliased shape edges, in units of the shape's radius
SOURCE = "synthetic (generated)"
CLASS_NAMES = ("disc", "ring", "square", "triangle", "plus", "bar",
               "coarse horizontal stripes", "fine horizontal stripes",
               "coarse vertical stripes", "fine vertical stripes")
#: Stripe classes: (class, base orientation in radians, spatial frequency in cycles per image).
STRIPES = ((6, 0.0, 2.0), (7, 0.0, 4.5), (8, math.pi / 2, 2.0), (9, math.pi / 2, 4.5))
STRIPE_JITTER = math.radians(20)


def _inside(label: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed inside-ness of shape ``label`` at shape coordinates ``(x, y)`` (> 0 inside)."""
    r = torch.sqrt(x * x + y * y)
    if label == 0:  # disc
        return 1.0 - r
    if label == 1:  # ring
        return 0.25 - (r - 0.75).abs()
    if label == 2:  # square
        return 0.8 - torch.maximum(x.abs(), y.abs())
    if label == 3:  # equilateral triangle: inside all three half-planes
        sides = [x * math.cos(a) + y * math.sin(a) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
        return 0.5 - torch.stack(sides).amax(0)
    bar_x = torch.minimum(0.25 - x.abs(), 0.95 - y.abs())
    bar_y = torch.minimum(0.25 - y.abs(), 0.95 - x.abs())
    if label == 4:  # plus sign
        return torch.maximum(bar_x, bar_y)
    if label == 5:  # a single bar
        return bar_x
    raise ValueError(f"class {label} is not a shape")


def _draw(label: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` images of class ``label`` in [0, 1] intensity units of the foreground (n x H x W)."""
    coords = (torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5) / IMAGE_SIZE * 2 - 1  # pixel centres in [-1, 1]
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    u, v = u[None], v[None]
    rand = torch.rand((n, 4), generator=generator)
    stripe = {c: (angle, freq) for c, angle, freq in STRIPES}.get(label)
    if stripe is not None:
        angle = stripe[0] + (2 * rand[:, 0] - 1) * STRIPE_JITTER
        phase = 2 * math.pi * rand[:, 1]
        along = u * torch.sin(angle)[:, None, None] + v * torch.cos(angle)[:, None, None]
        return 0.5 + 0.5 * torch.sin(math.pi * stripe[1] * along + phase[:, None, None])
    angle = 2 * math.pi * rand[:, 0]
    scale = (0.5 + 0.35 * rand[:, 1])[:, None, None]
    room = 1.0 - scale  # keep most of the shape inside the image
    cx = ((2 * rand[:, 2] - 1)[:, None, None]) * room
    cy = ((2 * rand[:, 3] - 1)[:, None, None]) * room
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    x = ((u - cx) * cos + (v - cy) * sin) / scale
    y = (-(u - cx) * sin + (v - cy) * cos) / scale
    return torch.sigmoid(_inside(label, x, y) / EDGE)


def _colour(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Paint ``images`` (n x H x W in [0, 1]) with random foreground/background colours and noise."""
    n = images.shape[0]
    background = 20 + 100 * torch.rand((n, CHANNELS), generator=generator)
    contrast = MIN_CONTRAST + 80 * torch.rand((n, 1), generator=generator)
    tint = 0.6 + 0.4 * torch.rand((n, CHANNELS), generator=generator)
    foreground = background + contrast * tint
    mix = images[:, None]
    pixels = background[:, :, None, None] * (1 - mix) + foreground[:, :, None, None] * mix
    pixels = pixels + NOISE * torch.randn(pixels.shape, generator=generator)
    return pixels.round().clamp(0, 255).to(torch.uint8)


def _split(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class (grouped by class) and their labels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.cat([_draw(label, per_class, generator) for label in range(NUM_CLASSES)])
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    return _colour(images, generator).contiguous(), labels


def sizes_for_run(steps: int, per_class: int | None, val_per_class: int = 0) -> tuple[int, int]:
    """``(train_per_class, test_per_class)`` a run needs: enough training images for ``steps``
    shards of ``per_class`` plus the validation images (at least the default 60, at most
    :data:`MAX_TRAIN_PER_CLASS`), and a test set of a fifth of that (at least the default 20).
    ``per_class=None`` (the whole set) gives the defaults."""
    if per_class is None:
        return TRAIN_PER_CLASS, TEST_PER_CLASS
    train = min(max(TRAIN_PER_CLASS, steps * per_class + val_per_class), MAX_TRAIN_PER_CLASS)
    return train, max(TEST_PER_CLASS, train // 5)


def generate(train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS) -> ImageData:
    """Build the dataset (identical on every call with the same sizes; the test set depends only
    on ``test_per_class``)."""
    train = _split(train_per_class, SEED)
    mean = tuple(round(v, 4) for v in (train[0].float().mean(dim=(0, 2, 3)) / 255).tolist())
    std = tuple(round(v, 4) for v in (train[0].float().std(dim=(0, 2, 3)) / 255).tolist())
    sizes = (train_per_class, test_per_class) != (TRAIN_PER_CLASS, TEST_PER_CLASS)
    source = f"synthetic (generated, {train_per_class} train + {test_per_class} test images per class)"
    return ImageData.from_splits("synthetic", train, _split(test_per_class, TEST_SEED), NUM_CLASSES, mean, std,
                                 source if sizes else SOURCE)


def load(root: Path, download: bool = True) -> ImageData:
    """Loader entry point for the registry (default sizes); ``root`` and ``download`` are ignored."""
    return generate()
