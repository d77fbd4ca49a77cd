"""L1 on BatchNorm scales, on chosen channels: subgradient, proximal step, zeroing, the sparsity reached.

``chosen`` maps a BN layer's name to the indices of its channels to act on (the selected filters'
channels, :func:`toolbox.sparsity.channels.selected_channels`). Plain functions on a model, tested on tiny
tensors; :class:`toolbox.sparsity.training.SparsityTraining` drives them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from toolbox.sparsity import channels as ch

#: The ``ratio`` of filters with the smallest mean |gamma| (:func:`toolbox.sparsity.channels.select_smallest_gamma`).
select = ch.select_smallest_gamma


def add_subgradient(model: nn.Module, chosen: dict[str, torch.Tensor], s: float) -> None:
    """Network Slimming's L1 subgradient ``grad += s * sign(gamma)`` on the chosen channels only."""
    for name, idx in chosen.items():
        weight = ch.module(model, name).weight
        if weight.grad is None or idx.numel() == 0:
            continue
        weight.grad[idx] += s * torch.sign(weight.detach()[idx])


@torch.no_grad()
def soft_threshold_(model: nn.Module, chosen: dict[str, torch.Tensor], tau: dict[str, Any] | Any) -> None:
    """Proximal L1 step ``gamma <- sign(gamma) * max(|gamma| - tau, 0)`` on the chosen channels.

    ``tau`` is a number/0-d tensor, or a dict of them per BN name. BN biases are left as they are.
    """
    for name, idx in chosen.items():
        if idx.numel() == 0:
            continue
        weight = ch.module(model, name).weight
        t = tau[name] if isinstance(tau, dict) else tau
        g = weight[idx]
        weight[idx] = torch.sign(g) * torch.clamp(g.abs() - t, min=0)


def max_chosen_gamma(model: nn.Module, chosen: dict[str, torch.Tensor]) -> torch.Tensor:
    """Largest |gamma| over the chosen channels (0-d tensor on the model's device, no sync)."""
    peaks = [ch.module(model, n).weight.detach()[i].abs().max() for n, i in chosen.items() if i.numel()]
    if not peaks:
        return torch.zeros(())
    return torch.stack(peaks).max()


@torch.no_grad()
def zero_chosen_(model: nn.Module, chosen: dict[str, torch.Tensor]) -> None:
    """Set the chosen gammas to exactly 0 (the target mode's end-of-phase guarantee)."""
    for name, idx in chosen.items():
        if idx.numel():
            ch.module(model, name).weight[idx] = 0.0


def achieved(model: nn.Module, graph: ch.ChannelGraph, selection: list[torch.Tensor],
             threshold: float) -> tuple[float, float]:
    """``(ratio, fraction)``: selected filters whose coupled |gamma| are all below ``threshold``,
    as a fraction of all prunable filters (comparable to r) and of the selected ones (1 = target)."""
    hits = sum(int(((peak < threshold) & sel.to(peak.device)).sum())
               for peak, sel in zip(ch.unit_max_gamma(model, graph), selection))
    chosen = sum(int(sel.sum()) for sel in selection)
    return hits / max(graph.num_units, 1), (hits / chosen if chosen else 1.0)
