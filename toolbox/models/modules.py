"""Small model-generic helpers: a model's BatchNorm layers, freezing a model, a dummy input batch.

Plain functions on any ``nn.Module`` (not only the backbones of this package), shared by the
sparsity, pruning, preflight and run code so each mechanism is written once.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model: nn.Module, affine: bool = False, running_stats: bool = False) -> dict[str, _BatchNorm]:
    """The BatchNorm layers of ``model`` by ``named_modules()`` name, in module order.

    ``affine`` keeps only those with a learnable scale and shift; ``running_stats`` only those
    that keep running statistics.
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)
            and (not affine or m.affine) and (not running_stats or m.running_mean is not None)}


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with no parameter requiring grad (in place); return it."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def dummy_input(input_size: Sequence[int], batch: int = 1, seed: int = 0, device: torch.device | str | None = None,
                zeros: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``(batch, *input_size)`` float batch: standard normal draws, or ``zeros``.

    The draws come from a private CPU generator seeded with ``seed`` (the global random state is
    untouched), or from ``generator`` itself when given (it advances), and are then moved to
    ``device``; zeros are made on ``device`` directly. ``device=None`` means the CPU.
    """
    shape = (batch, *tuple(input_size))
    if zeros:
        return torch.zeros(shape, device=device if device is not None else "cpu")
    draws = torch.randn(shape, generator=generator if generator is not None else torch.Generator().manual_seed(seed))
    return draws if device is None else draws.to(device)
