"""A tiny, deterministic, learnable dataset generated in memory (for tests and smoke runs).

Each of the 10 classes has a fixed random low-frequency colour template (3 x 4 x 4 noise
upsampled bicubically to 20 x 20). A sample is a random 16 x 16 window of its class template
(a shift of up to 2 pixels each way), scaled around mid-grey, plus independent per-pixel
Gaussian noise. A small CNN gets well above chance within a few epochs but not at once.
Everything comes from one fixed-seed ``torch.Generator``, independent of the global RNG.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from toolbox.data.datasets import ImageData

SEED = 20240601
NUM_CLASSES = 10
IMAGE_SIZE = 16
CHANNELS = 3
TRAIN_PER_CLASS = 60
TEST_PER_CLASS = 20
MAX_SHIFT = 2
AMPLITUDE = 40.0  # template contrast in grey levels (per unit of template std)
NOISE = 60.0  # per-pixel noise std in grey levels
SOURCE = "synthetic (generated)"


def _templates(generator: torch.Generator) -> torch.Tensor:
    """Zero-mean, unit-std class templates, NUM_CLASSES x C x (S + 2 shift) x (S + 2 shift)."""
    big = IMAGE_SIZE + 2 * MAX_SHIFT
    coarse = torch.randn(NUM_CLASSES, CHANNELS, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(big, big), mode="bicubic", align_corners=False)
    mean = smooth.mean(dim=(1, 2, 3), keepdim=True)
    std = smooth.std(dim=(1, 2, 3), keepdim=True)
    return (smooth - mean) / std


def _samples(
    templates: torch.Tensor, per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` shifted, noisy uint8 samples of every class, grouped by class."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    n = labels.numel()
    span = 2 * MAX_SHIFT + 1
    oy = torch.randint(0, span, (n,), generator=generator)
    ox = torch.randint(0, span, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(IMAGE_SIZE))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(IMAGE_SIZE))[:, None, None, :]
    chans = torch.arange(CHANNELS)[None, :, None, None]
    windows = templates[labels[:, None, None, None], chans, rows, cols]
    noise = torch.randn(windows.shape, generator=generator)
    pixels = 128.0 + AMPLITUDE * windows + NOISE * noise
    return pixels.round().clamp(0, 255).to(torch.uint8).contiguous(), labels


def generate() -> ImageData:
    """Build the synthetic dataset (identical on every call; ~10 ms)."""
    generator = torch.Generator().manual_seed(SEED)
    templates = _templates(generator)
    train_x, train_y = _samples(templates, TRAIN_PER_CLASS, generator)
    test_x, test_y = _samples(templates, TEST_PER_CLASS, generator)
    mean = tuple(round(v, 4) for v in (train_x.float().mean(dim=(0, 2, 3)) / 255).tolist())
    std = tuple(round(v, 4) for v in (train_x.float().std(dim=(0, 2, 3)) / 255).tolist())
    return ImageData(
        name="synthetic",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=NUM_CLASSES,
        mean=mean,
        std=std,
        source=SOURCE,
    )


def load(root: Path, download: bool = True) -> ImageData:
    """Loader entry point for the registry; ``root`` and ``download`` are ignored."""
    return generate()
