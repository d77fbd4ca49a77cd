"""Shrink and perturb (Ash & Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020).

A warm-started model generalizes worse than one trained from scratch on the same data; scaling
its weights down and adding a little of a fresh initialization before training on the grown
data recovers much of the gap.
"""

from __future__ import annotations

import torch
from torch import nn

from toolbox.errors import UsageError


@torch.no_grad()
def shrink_perturb_(model: nn.Module, fresh: nn.Module, shrink: float, perturb: float) -> int:
    """Every parameter becomes ``shrink * theta + perturb * theta_fresh``, in place; returns how many.

    ``fresh`` is a freshly initialized model of the same architecture (its parameters are
    matched by name). Buffers (BatchNorm running statistics) are left alone: they are stale
    afterwards, so re-estimate or reset them (``toolbox.methods.bn_statistics``).
    """
    fresh_params = dict(fresh.named_parameters())
    for name, param in model.named_parameters():
        other = fresh_params.get(name)
        if other is None or other.shape != param.shape:
            raise UsageError(f"shrink-and-perturb needs a fresh model of the same shape, but parameter {name} "
                             f"is {tuple(param.shape)} here and {None if other is None else tuple(other.shape)} "
                             "in the fresh model; do not combine it with a plugin that changes the architecture.")
    for name, param in model.named_parameters():
        param.mul_(shrink).add_(fresh_params[name].to(param), alpha=perturb)
    return len(fresh_params)
