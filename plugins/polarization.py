"""``polarization``: the polarization regularizer (Zhuang et al., NeurIPS 2020) as a sparsity plugin.

"Neuron-level Structured Pruning using Polarization Regularizer" penalizes the BN scales with

    R(gamma) = t * ||gamma||_1 - ||gamma - mean(gamma) * 1||_1 = sum_i t|g_i| - |g_i - mean(g)|

over **all** scaling factors of the network at once (the mean is over all of them, as in the
paper's formulation and its code), which pushes a part of the gammas to 0 and the others away
from it. Its (sub)gradient, the mean's dependence on every gamma included, is

    dR/dg_i = t * sign(g_i) - sign(g_i - mean) + (1/n) * sum_j sign(g_j - mean).

Options: ``--polar-t`` (t, default 1.2 as in the paper's experiments), ``--polar-s`` (strength,
default 1e-4, the paper code's ``--lbd`` default) and ``--polar-clamp`` (clamp the gammas to
[0, 1] after every step: the paper's constraint gamma in [0, a], a = 1; off by default because it
changes the function of a model trained without it). The masks are the r fraction with the
smallest mean |gamma|, the ones pushed towards 0. Modes (``--polar-mode``): ``subgradient``
(fixed strength on every gamma) and ``target`` (default: the r smallest are driven to 0 by the
adaptive proximal schedule of :class:`toolbox.sparsity.training.SparsityTraining`, every other gamma gets
the fixed-strength polarization gradient, its mean still taken over all gammas).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toolbox.options import PluginOption
from toolbox.sparsity import channels as ch
from toolbox.sparsity.training import SparsityTraining, Units


def polarization_penalty(gammas: torch.Tensor, t: float) -> torch.Tensor:
    """``t * ||gammas||_1 - ||gammas - mean(gammas)||_1`` of a 1-D tensor."""
    return t * gammas.abs().sum() - (gammas - gammas.mean()).abs().sum()


def polarization_grad(gammas: torch.Tensor, t: float) -> torch.Tensor:
    """Subgradient of :func:`polarization_penalty` (sign(0) = 0), mean term included."""
    dev = torch.sign(gammas - gammas.mean())
    return t * torch.sign(gammas) - dev + dev.mean()


class Polarization(SparsityTraining):
    """Polarization regularizer on all prunable BN scales; masks = the r smallest |gamma|."""

    name = "polarization"
    label = "polarization"
    prefix = "polar"
    strength = "polar_s"
    default_strength = 1e-4
    strength_help = "strength of the polarization regularizer (the paper's lambda)"
    mode_help = ("target: reach --ratio by --sparsity-target-at of the phase, then hold it; "
                 "subgradient: fixed --polar-s on every gamma")
    selective = False
    modes = ("target", "subgradient")

    def __init__(self) -> None:
        """Start with the paper's t; :meth:`configure_penalty` reads the options."""
        super().__init__()
        self.t, self.clamp = 1.2, False

    @classmethod
    def extra_options(cls) -> list[PluginOption]:
        """``--polar-t`` and ``--polar-clamp``."""
        return [
            PluginOption("polar_t", float, 1.2, "t: weight of the L1 term against the distance to the mean",
                         check=lambda v: None if v > 0 else "t must be > 0, e.g. 1.2."),
            PluginOption("polar_clamp", bool, False, "clamp the BN scales to [0, 1] after every step "
                         "(the paper's constraint)"),
        ]

    def configure_penalty(self, plugin: dict[str, Any]) -> None:
        """Read ``--polar-t`` and ``--polar-clamp`` (validated by their declarations)."""
        self.t = float(plugin["polar_t"])
        self.clamp = bool(plugin["polar_clamp"])

    def _weights(self, model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
        names = self.graph.bn_names()
        return names, [ch.module(model, n).weight for n in names]

    def penalty_grad_(self, model: nn.Module, units: Units, s: float) -> None:
        """``grad += s * dR/dgamma`` on the gammas of ``units``, R taken over every prunable gamma."""
        names, weights = self._weights(model)
        if not weights:
            return
        grad = polarization_grad(torch.cat([w.detach().float().reshape(-1) for w in weights]), self.t)
        for name, weight, part in zip(names, weights, grad.split([w.numel() for w in weights])):
            idx = units.channels.get(name)
            if weight.grad is None or idx is None or idx.numel() == 0:
                continue
            weight.grad[idx] += s * part[idx].to(weight.grad.dtype)

    @torch.no_grad()
    def after_step_(self, model: nn.Module) -> None:
        """With ``--polar-clamp``: keep every prunable gamma in [0, 1]."""
        if self.clamp:
            for weight in self._weights(model)[1]:
                weight.clamp_(0.0, 1.0)
