"""``group_lasso``: group lasso on whole filters as a sparsity plugin.

A filter (one unit of a BN channel group, :mod:`toolbox.sparsity.channels`) is the vector ``w_u`` of every
weight that belongs to it: the output-channel weights (and bias) of every coupled conv producing
it, and the gamma and beta of every coupled BN. The penalty is

    R(w) = sum over filters u of ||w_u||_2,   gradient  s * w_u / ||w_u||_2  (0 when w_u = 0),

and its proximal step is block soft-thresholding ``w_u <- w_u * max(1 - tau / ||w_u||, 0)``.
The importance of a filter is ``||w_u||``; the masks are the fraction ``--ratio`` r of filters with
the smallest norm. Modes (``--gl-mode``): ``subgradient`` (fixed ``--gl-s`` on every filter),
``proximal`` (block soft-threshold with fixed ``tau = lr * s``) and ``target`` (default: the r
smallest filters are shrunk to 0 by the adaptive proximal schedule of
:class:`toolbox.sparsity.training.SparsityTraining`, every other filter gets the fixed-strength gradient).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toolbox.sparsity import channels as ch
from toolbox.sparsity.training import SparsityTraining, Units


def unit_parameters(model: nn.Module, group: ch.ChannelGroup) -> list[tuple[torch.Tensor, ch.ModuleSlice]]:
    """Every ``(parameter, slice)`` whose rows ``slice.index`` belong to the group's units."""
    out = []
    for part in group.producers:
        layer = ch.module(model, part.name)
        out.append((layer.weight, part))
        if getattr(layer, "bias", None) is not None:
            out.append((layer.bias, part))
    for part in group.bns:
        bn = ch.module(model, part.name)
        out += [(bn.weight, part), (bn.bias, part)]
    return out


def group_norms(model: nn.Module, graph: ch.ChannelGraph) -> list[torch.Tensor]:
    """Per group, the L2 norm ``||w_u||`` of every unit (detached, float)."""
    norms = []
    for group in graph.groups:
        total: Any = 0.0
        for param, part in unit_parameters(model, group):
            rows = param.detach()[part.index.to(param.device)].float().reshape(group.size, -1)
            total = total + rows.pow(2).sum(1)
        norms.append(torch.sqrt(total) if torch.is_tensor(total) else torch.zeros(group.size))
    return norms


def _scale(norms: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``norms`` reshaped to broadcast over the rows of ``param``."""
    return norms.view(-1, *([1] * (param.dim() - 1))).to(param.dtype)


def _selected_norms(model: nn.Module, units: Units) -> list[tuple[int, torch.Tensor]]:
    """``(group index, norms of the group's units in the set)`` for every group the set touches."""
    out = []
    for gi, group in enumerate(units.graph.groups):
        if not bool(units.selection[gi].any()):
            continue
        total: Any = 0.0
        for param, part in unit_parameters(model, group):
            total = total + param.detach()[units.index(gi, part)].float().reshape(-1, param[0].numel()).pow(2).sum(1)
        out.append((gi, torch.sqrt(total)))
    return out


def add_group_lasso_grad_(model: nn.Module, units: Units, s: float) -> None:
    """``grad += s * w_u / ||w_u||`` for every unit of ``units`` (nothing where ``w_u = 0``)."""
    for gi, norms in _selected_norms(model, units):
        coef = torch.where(norms > 0, s / norms.clamp(min=1e-30), torch.zeros_like(norms))
        for param, part in unit_parameters(model, units.graph.groups[gi]):
            if param.grad is None:
                continue
            idx = units.index(gi, part)
            param.grad[idx] += param.detach()[idx] * _scale(coef, param)


@torch.no_grad()
def block_soft_threshold_(model: nn.Module, units: Units, tau: Any) -> None:
    """``w_u <- w_u * max(1 - tau / ||w_u||, 0)`` for every unit of ``units``."""
    for gi, norms in _selected_norms(model, units):
        factor = torch.clamp(1 - tau / norms.clamp(min=1e-30), min=0)
        for param, part in unit_parameters(model, units.graph.groups[gi]):
            idx = units.index(gi, part)
            param[idx] = param[idx] * _scale(factor, param)


def max_norm(model: nn.Module, units: Units) -> torch.Tensor:
    """The largest ``||w_u||`` over ``units`` (0-d tensor)."""
    peaks = [norms.max() for _, norms in _selected_norms(model, units) if norms.numel()]
    return torch.stack(peaks).max() if peaks else torch.zeros(())


class GroupLasso(SparsityTraining):
    """Group lasso over whole filters (conv output channels + BN gamma/beta); masks = smallest norms."""

    name = "group_lasso"
    label = "group lasso"
    prefix = "gl"
    strength = "gl_s"
    default_strength = 1e-4
    strength_help = ("strength s of s * sum of filter L2 norms (subgradient/proximal modes, and the "
                     "unselected filters in target mode)")
    mode_help = ("target: reach --ratio by --sparsity-target-at of the phase, then hold it; "
                 "subgradient/proximal: fixed --gl-s on every filter")
    selective = False

    def importance(self, model: nn.Module) -> list[torch.Tensor]:
        """The L2 norm of each filter's weights."""
        return group_norms(model, self.graph)

    def penalty_grad_(self, model: nn.Module, units: Units, s: float) -> None:
        """``grad += s * w_u / ||w_u||`` on ``units``."""
        add_group_lasso_grad_(model, units, s)

    def prox_(self, model: nn.Module, units: Units, tau: Any) -> None:
        """Block soft-threshold of ``units``."""
        block_soft_threshold_(model, units, tau)

    def peak(self, model: nn.Module, units: Units) -> torch.Tensor:
        """The largest filter norm among ``units``."""
        return max_norm(model, units)

    def zero_(self, model: nn.Module, units: Units) -> None:
        """Zero every weight of ``units`` (conv rows, gamma, beta)."""
        block_soft_threshold_(model, units, float("inf"))
