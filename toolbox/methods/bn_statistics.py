"""BatchNorm running statistics: re-estimating, resetting, and normalizing with batch statistics.

Any change of a model's weights outside training (rescaling, redrawing, shrink-and-perturb)
leaves the BatchNorm running statistics describing activations the model no longer produces;
evaluated with them, the model can sit at chance (FINDINGS 12). :func:`reestimate` measures
them again on data, :func:`reset` forgets them. :func:`batch_statistics` lets a frozen model
normalize with each batch's own statistics without touching its stored ones.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from toolbox.models.modules import batchnorms

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of ``model`` that keeps running statistics."""
    return list(batchnorms(model, running_stats=True).values())


@torch.no_grad()
def reset(model: nn.Module) -> None:
    """Running mean 0, running variance 1 and no batches tracked, in every BatchNorm layer."""
    for bn in batchnorm_layers(model):
        bn.reset_running_stats()


@torch.no_grad()
def reestimate(model: nn.Module, batches: Batches) -> int:
    """Measure every BatchNorm layer's running statistics on ``batches``; return the batches used.

    The statistics are reset first, then accumulated as a cumulative average over the batches
    (``momentum=None``: every batch weighs the same, whatever their number). Only the BatchNorm
    layers run in train mode (dropout and the like stay in eval mode), no gradient is recorded,
    and every module's mode and momentum are restored afterwards. With no batches the
    statistics are left reset.
    """
    layers = batchnorm_layers(model)
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in layers]
    reset(model)
    used = 0
    try:
        model.eval()
        for bn in layers:
            bn.momentum = None
            bn.train()
        for inputs, _ in batches:
            model(inputs)
            used += 1
    finally:
        for module, training in modes.items():
            module.train(training)
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
    return used


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``model``'s BatchNorm layers normalize with each batch's statistics.

    The stored running statistics are neither used nor updated (they are bit-identical after
    the block), and the layers' train/eval mode does not change: PyTorch's BatchNorm normalizes
    with the batch's statistics when a layer has no running statistics, so they are detached
    for the duration of the block and put back afterwards.
    """
    layers = batchnorm_layers(model)
    saved = [(bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.training) for bn in layers]
    try:
        for bn in layers:
            bn.eval()  # eval: no update of num_batches_tracked either
            bn.running_mean, bn.running_var = None, None
        yield model
    finally:
        for bn, (mean, var, tracked, training) in zip(layers, saved):
            bn.running_mean, bn.running_var, bn.num_batches_tracked = mean, var, tracked
            bn.train(training)
