"""Re-initializing filters: fresh weights for chosen BN channel units, everything else untouched.

:func:`reinitialize` redraws exactly the selected filters of every channel group (units of
:mod:`toolbox.sparsity.channels`): the output channels of every conv feeding their coupled BNs, the BN
scale (``gamma``), shift (0) and running statistics (mean 0, var 1), and optionally the consuming
layers' input slices (``next_layers``). ``aod`` calls it at the start of its learn phases and
``toolbox check`` in its dry run.

Strategies:

* ``kaiming``: Kaiming-normal (fan-in, ReLU gain), as PyTorch's ``kaiming_normal_``;
* ``orthogonal``: Gaussian draws with the span of the layer's kept filters projected out, each
  rescaled to the Kaiming norm ``sqrt(2 / fan_in) * sqrt(fan_in)``; Kaiming when the span is full;
* ``diverse``: as orthogonal, and the new filters are also orthogonal to each other (as many as
  the free dimensions allow, the rest only orthogonal to the kept ones), with a per-filter norm
  of the Kaiming norm times a factor drawn uniformly from [0.5, 1.5];
* ``none``: nothing is re-initialized.

The default gamma is 0.01, not 0: with gamma = beta = 0 a filter's BN output is exactly 0 for
every input (all coupled BNs of a residual channel are re-initialized together, so the shortcut
adds 0 as well), ReLU's gradient at 0 is 0, and the filter never receives a gradient again. A
small gamma keeps the network's function nearly intact and lets the filters grow.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toolbox.errors import UsageError
from toolbox.sparsity import channels as ch

#: How re-initialized filters are drawn.
STRATEGIES = ("kaiming", "orthogonal", "diverse", "none")
#: What happens to the consuming layers' input weights of re-initialized filters.
NEXT = ("keep", "zero", "kaiming")
#: The defaults ``aod`` uses (and the dry run of ``toolbox check``).
DEFAULT_STRATEGY, DEFAULT_GAMMA, DEFAULT_NEXT = "kaiming", 0.01, "keep"


def kaiming_std(weight: torch.Tensor) -> float:
    """Std of Kaiming-normal (fan-in, ReLU gain) for a conv/linear weight."""
    fan_in = weight[0].numel()
    return math.sqrt(2.0 / fan_in)


def _orthonormal_rows(rows: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis (as rows) of the span of ``rows``."""
    if rows.numel() == 0:
        return rows.new_zeros(0, rows.shape[1])
    u, sv, vh = torch.linalg.svd(rows, full_matrices=False)
    rank = int((sv > tol * sv.max().clamp(min=1e-30)).sum())
    return vh[:rank]


def draw_filters(kept: torch.Tensor, count: int, strategy: str, std: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` new flattened filters of dimension ``kept.shape[1]`` (float64 math, float32 out).

    See the module docstring for the strategies; orthogonal/diverse fall back to Kaiming when the
    kept filters span the whole space.
    """
    dim = kept.shape[1]
    fresh = torch.randn(count, dim, generator=generator, dtype=torch.float64) * std
    if strategy == "kaiming" or count == 0:
        return fresh.float()
    basis = _orthonormal_rows(kept.double())
    if basis.shape[0] >= dim:
        return fresh.float()
    fresh = fresh - (fresh @ basis.T) @ basis
    if strategy == "diverse":
        free = min(count, dim - basis.shape[0])
        q, _ = torch.linalg.qr(fresh[:free].T)  # columns orthonormal, inside the complement
        fresh = torch.cat([q.T[:free], fresh[free:]])
    norm = std * math.sqrt(dim)
    scale = norm / fresh.norm(dim=1, keepdim=True).clamp(min=1e-12)
    if strategy == "diverse":
        scale = scale * (0.5 + torch.rand(count, 1, generator=generator, dtype=torch.float64))
    return (fresh * scale).float()


@torch.no_grad()
def reinit_producer(layer: nn.Module, idx: torch.Tensor, strategy: str,
                    generator: torch.Generator | None = None) -> None:
    """Redraw output channels ``idx`` of a conv/linear layer (bias 0), others untouched."""
    weight = layer.weight
    out = weight.shape[0]
    keep = torch.ones(out, dtype=torch.bool)
    keep[idx.cpu()] = False
    flat = weight.detach().reshape(out, -1).double().cpu()
    new = draw_filters(flat[keep], int(idx.numel()), strategy, kaiming_std(weight), generator)
    weight[idx.to(weight.device)] = new.reshape((-1,) + tuple(weight.shape[1:])).to(weight)
    if getattr(layer, "bias", None) is not None:
        layer.bias[idx.to(weight.device)] = 0.0


@torch.no_grad()
def reinit_bn(bn: nn.Module, idx: torch.Tensor, gamma: float) -> None:
    """BN channels ``idx``: scale ``gamma``, shift 0, running mean 0 and var 1."""
    idx = idx.to(bn.weight.device)
    bn.weight[idx] = gamma
    bn.bias[idx] = 0.0
    if bn.running_mean is not None:
        bn.running_mean[idx] = 0.0
        bn.running_var[idx] = 1.0


@torch.no_grad()
def reinit_consumer(layer: nn.Module, idx: torch.Tensor, how: str,
                    generator: torch.Generator | None = None) -> bool:
    """Input slices ``idx`` of a consuming conv/linear: ``zero`` or ``kaiming``; False if unsupported."""
    if how == "keep":
        return True
    if getattr(layer, "groups", 1) != 1:
        return False
    weight = layer.weight
    idx = idx.to(weight.device)
    if how == "zero":
        weight[:, idx] = 0.0
    else:
        shape = (weight.shape[0], int(idx.numel())) + tuple(weight.shape[2:])
        draw = torch.randn(shape, generator=generator) * kaiming_std(weight)
        weight[:, idx] = draw.to(weight)
    return True


def reinitialize(model: nn.Module, graph: ch.ChannelGraph, selection: list[torch.Tensor], strategy: str,
                 gamma: float, next_layers: str = "keep", generator: torch.Generator | None = None) -> int:
    """Re-initialize the selected filters of every group in place; returns how many filters.

    Producers and BNs of all groups first, then the consumers' input slices, so a fresh filter
    that reads re-initialized channels gets ``next_layers`` applied to those inputs too.
    """
    if strategy == "none":
        return 0
    chosen = [(g, sel.cpu()) for g, sel in zip(graph.groups, selection) if bool(sel.any())]
    for group, sel in chosen:
        for s in group.producers:
            reinit_producer(ch.module(model, s.name), s.index[sel], strategy, generator)
        for s in group.bns:
            reinit_bn(ch.module(model, s.name), s.index[sel], gamma)
    for group, sel in chosen:
        for s in group.consumers:
            if not reinit_consumer(ch.module(model, s.name), s.index[sel], next_layers, generator):
                raise UsageError(f"--reinit-next {next_layers} cannot handle the grouped conv {s.name}; use keep.")
    return sum(int(sel.sum()) for _, sel in chosen)
