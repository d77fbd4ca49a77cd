"""``l2bn``: an L2 penalty on the BatchNorm scales, ``(l2bn / 2) * sum(gamma^2)``.

Its gradient ``l2bn * gamma`` is added in ``toolbox_regularize`` (after backward, on true,
unscaled gradients, before the optimizer step) in every phase. A minimal example of a
regularizer plugin: two hooks, one option, one plain function that is tested on tiny tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption


def add_l2_gamma_grad_(model: nn.Module, strength: float) -> None:
    """``grad += strength * gamma`` for the scale of every affine BatchNorm layer of ``model``."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.weight is not None and module.weight.grad is not None:
            module.weight.grad.add_(module.weight.detach(), alpha=strength)


class L2BN:
    """L2 penalty on BN scales; the strength is ``--l2bn``."""

    def __init__(self) -> None:
        """Start with the default strength."""
        self.strength = 1e-4

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--l2bn`` (the strength)."""
        return [PluginOption("l2bn", float, 1e-4, "strength of the L2 penalty on BN scales",
                             check=lambda v: None if v >= 0 else "the strength must be >= 0.")]

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        """Read the strength."""
        self.strength = float(options.plugin["l2bn"])
        if self.strength < 0:
            raise UsageError(f"--l2bn must be >= 0, got {self.strength}.")

    @hookimpl
    def toolbox_regularize(self, ctx: Any, model: nn.Module) -> None:
        """Add ``l2bn * gamma`` to every BN scale's gradient."""
        if self.strength > 0:
            inner = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
            add_l2_gamma_grad_(inner, self.strength)

    @hookimpl
    def toolbox_epoch_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        """Log ``l2bn_term``: the penalty's value at the end of the epoch."""
        with torch.no_grad():
            total = sum(float(m.weight.pow(2).sum()) for m in ctx.model.modules()
                        if isinstance(m, _BatchNorm) and m.weight is not None)
        metrics["l2bn_term"] = 0.5 * self.strength * total
