"""Elastic Weight Consolidation, online variant (Kirkpatrick et al. 2017; Schwarz et al. 2018).

After each step a diagonal Fisher information ``F`` is estimated on that step's data and folded
into a running estimate (``F <- gamma * F + F_new``); the parameters at that moment are the
anchor ``theta*``. Later training adds ``lambda / 2 * sum F (theta - theta*)^2``, which keeps the
parameters the earlier data found important near their old values.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

TARGETS = ("labels", "predictions")
Tensors = dict[str, torch.Tensor]

# per-sample gradients are computed in chunks holding about this many numbers (1 GiB of float32)
_CHUNK_NUMBERS = 2 ** 28


def diagonal_fisher(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    targets: str = "labels") -> Tensors:
    """The diagonal Fisher of ``model`` on ``batches``: per parameter, the mean over samples of the
    squared per-sample gradient of ``log p(y | x)`` (float32, same device as the parameter).

    ``targets="labels"`` uses the samples' labels for ``y`` (the *empirical* Fisher, what most
    EWC implementations compute, Avalanche's included): it measures how sharply the loss the
    step actually trained on depends on each parameter. ``targets="predictions"`` uses the
    model's own most likely class (FACIL's default), closer to the true Fisher when the model
    has not fitted the labels. The default is ``labels`` because the penalty should protect what
    the data taught, and the two agree wherever the model is right.

    Gradients are per sample (``torch.func.vmap``), not squared batch means, so the estimate
    does not depend on the batch size. The model is evaluated in eval mode (BatchNorm with its
    running statistics, as the model is used) without changing its parameters or buffers; its
    mode is restored afterwards.
    """
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    was_training = model.training
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    chunk = max(1, _CHUNK_NUMBERS // max(1, sum(p.numel() for p in params.values())))

    def log_likelihood(weights: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (weights, buffers), (x.unsqueeze(0),)).float()
        return -F.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(log_likelihood), in_dims=(None, 0, 0))
    count = 0
    try:
        for inputs, labels in batches:
            if targets == "predictions":
                with torch.no_grad():
                    labels = model(inputs).argmax(dim=1)
            for start in range(0, inputs.shape[0], chunk):
                grads = per_sample(params, inputs[start:start + chunk], labels[start:start + chunk])
                for name, g in grads.items():
                    sums[name] += g.float().pow(2).sum(dim=0)
            count += int(inputs.shape[0])
    finally:
        model.train(was_training)
    return {n: s / max(count, 1) for n, s in sums.items()}


def online_update(fisher: Tensors | None, new: Tensors, gamma: float) -> Tensors:
    """``gamma * fisher + new`` per parameter (``new`` alone when there is no earlier estimate)."""
    if fisher is None:
        return {n: t.clone() for n, t in new.items()}
    return {n: gamma * fisher[n].to(t) + t for n, t in new.items()}


def ewc_penalty(model: nn.Module, fisher: Tensors, anchor: Tensors, strength: float) -> torch.Tensor:
    """``strength / 2 * sum F (theta - theta*)^2`` over the parameters that have a Fisher estimate.

    Its gradient is ``strength * F * (theta - theta*)``. A parameter whose shape differs from
    its anchor's (a pruned model) raises ``ValueError``.
    """
    total: torch.Tensor | None = None
    for name, param in model.named_parameters():
        if name not in fisher:
            continue
        if param.shape != anchor[name].shape:
            raise ValueError(f"EWC: parameter {name} is {tuple(param.shape)} but its anchor "
                             f"{tuple(anchor[name].shape)}; EWC cannot follow a change of architecture.")
        term = (fisher[name] * (param.float() - anchor[name]).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=next(model.parameters()).device)
    return 0.5 * strength * total
