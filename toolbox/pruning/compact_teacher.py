"""Compact frozen teachers: distil from the compacted copy of a teacher whose masked filters are 0.

A frozen teacher that comes out of SST (AOD's teacher; msl's earlier SST models with
``--msl-teachers all``) has BN scale exactly 0 on every masked filter: those filters output a
constant, and :func:`toolbox.pruning.compaction.compact` removes them while folding the constants into
their consumers, so the compact copy computes the same logits for a fraction of the MACs.
:func:`compact_teacher` builds that copy and checks it (exact zeros first, then the logits on a
probe batch); :func:`distillation_teacher` is what the core and plugins call: the compact copy
where it applies, else the dense teacher, with one log line either way. Either way the module
distilled from has its BatchNorms folded into the convs before them (:func:`inference_copy`,
:mod:`toolbox.pruning.fold_batchnorm`): exact with the running statistics these teachers use, and about a third
of a narrow ResNet's forward saved. ``--compact-teacher false`` turns both off (the teacher itself).
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
from torch import nn

from toolbox.errors import UsageError
from toolbox.models.modules import batchnorms, dummy_input, freeze
from toolbox.pruning import compaction as cp
from toolbox.pruning.cost import cost
from toolbox.pruning.fold_batchnorm import fold_batchnorm, is_channels_last
from toolbox.sparsity import channels as ch

log = logging.getLogger("toolbox")

#: The compact copy's logits on the probe batch must match within this (relative to max |logit|, at least 1).
PROBE_TOLERANCE = 1e-4


def zero_scale_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per BN name, the channels whose scale (gamma) is exactly 0 (only BNs that have any)."""
    masks = {}
    for name, m in batchnorms(ch.unwrap(model), affine=True).items():
        zero = (m.weight.detach() == 0).cpu()
        if bool(zero.any()):
            masks[name] = zero
    return masks


def nonzero_masked_units(model: nn.Module, graph: ch.ChannelGraph, selection: list[torch.Tensor]) -> int:
    """How many selected units have a coupled BN scale that is not exactly 0."""
    count = 0
    for group, sel in zip(graph.groups, selection):
        alive = torch.zeros(group.size, dtype=torch.bool)
        for s in group.bns:
            weight = ch.module(model, s.name).weight.detach().cpu()
            alive |= weight[s.index] != 0
        count += int((alive & sel.cpu()).sum())
    return count


def _probe(model: nn.Module, input_size: Sequence[int], device: torch.device) -> torch.Tensor:
    """Two random images of ``input_size`` (fixed private seed: the run's random streams stay untouched)."""
    x = dummy_input(input_size, 2, seed=0, device=device)
    return x.contiguous(memory_format=torch.channels_last) if is_channels_last(model) else x


def compact_teacher(teacher: nn.Module, masks: dict[str, torch.Tensor] | None,
                    input_size: Sequence[int] | None, round_to: int = 1) -> tuple[nn.Module | None, str]:
    """A compact, frozen, eval-mode copy of ``teacher`` with the same logits, or ``None``; and why.

    ``masks`` (``dict[bn_name, BoolTensor]``, True = unimportant, as ``sst`` writes them) name the
    filters to remove; their coupled BN scales must all be exactly 0 (else ``None``: the copy
    would not compute the teacher's function). ``masks=None`` removes every filter whose coupled
    BN scales are all exactly 0. ``input_size`` is (C, H, W) (default: the model's timm cfg).
    ``round_to`` is :func:`toolbox.pruning.compaction.compact`'s (keep widths multiples of it; still exact).
    The copy's logits are checked on a probe batch (fp32) against the teacher's. Returns
    ``(None, reason)`` where compaction does not apply: no masked filter, masked scales not 0, a
    backbone torch-pruning cannot trace, constants that cannot be folded, a logit mismatch.
    ``teacher`` is not changed; the copy lives on its device and memory format.
    """
    dense = ch.unwrap(teacher)
    params = list(dense.parameters())
    if not params:
        return None, "the teacher has no parameters"
    device = params[0].device
    derived = masks is None
    masks = zero_scale_masks(dense) if derived else {k: v for k, v in masks.items() if bool(torch.as_tensor(v).any())}
    if not masks:
        return None, "no filter has BN scale exactly 0" if derived else "no masked filters"
    with torch.autocast(device.type, enabled=False):
        try:
            model = copy.deepcopy(dense).requires_grad_(True)  # torch-pruning traces through autograd
            example = ch.example_input(model, input_size)
            graph = ch.channel_groups(model, example_inputs=example)
        except Exception as exc:  # noqa: BLE001 (any tracing failure means: use the dense teacher)
            return None, f"its channel groups cannot be traced ({type(exc).__name__}: {str(exc)[:120]})"
        try:
            selection = ch.masks_to_selection(graph, masks)
        except UsageError as exc:
            return None, str(exc)
        if derived:  # a unit is removable only when every coupled BN scale is 0
            peaks = ch.unit_max_gamma(model, graph)
            selection = [sel & (peak.cpu() == 0) for sel, peak in zip(selection, peaks)]
        else:
            alive = nonzero_masked_units(model, graph, selection)
            if alive:
                return None, (f"{alive} masked filters have a BN scale that is not 0, so removing them would "
                              "change its function")
        if not any(bool(sel.any()) for sel in selection):
            return None, ("no filter of a prunable channel group has every BN scale exactly 0" if derived
                          else "no masked filter lies in a prunable channel group")
        units = ch.selection_to_masks(model, graph, selection)
        try:
            small, structure = cp.compact(model, masks=units, example_inputs=example, round_to=round_to)
        except Exception as exc:  # noqa: BLE001 (a pruning failure means: use the dense teacher)
            return None, f"compaction failed ({type(exc).__name__}: {str(exc)[:120]})"
        stats = structure["compactions"][-1]
        if stats["unfolded"]:
            return None, f"the removed filters' constants cannot be folded into {', '.join(stats['unfolded'][:3])}"
        small = small.to(device)
        if is_channels_last(model):
            small = small.to(memory_format=torch.channels_last)
        freeze(small)
        x = _probe(model, example.shape[1:], device)
        with torch.no_grad():
            expected, got = model.eval()(x).float(), small(x).float()
        gap = float((expected - got).abs().max())
        if not gap <= PROBE_TOLERANCE * max(1.0, float(expected.abs().max())):
            return None, f"the compact copy's logits differ from the teacher's by {gap:.2e}"
    return small, f"removed {stats['removed']} of {stats['filters']} filters"


def inference_copy(module: nn.Module, input_size: Sequence[int] | None) -> tuple[nn.Module | None, str]:
    """``module`` with its BatchNorms folded into the layers before them (:func:`toolbox.pruning.fold_batchnorm.fold_batchnorm`),
    checked on a probe batch like :func:`compact_teacher`'s copy; ``(None, reason)`` where nothing folds."""
    if any(m.training for m in batchnorms(module).values()):
        return None, "its BatchNorms are in train mode (batch statistics)"
    try:
        shape = ch.example_input(module, input_size).shape[1:]
    except UsageError:
        return None, "no input size to check a folded copy on"
    folded, reason = fold_batchnorm(module)
    if folded is None:
        return None, reason
    with torch.autocast(_device(module).type, enabled=False), torch.no_grad():
        x = _probe(module, shape, _device(module))
        expected, got = module(x).float(), folded(x).float()
    gap = float((expected - got).abs().max())
    if not gap <= PROBE_TOLERANCE * max(1.0, float(expected.abs().max())):
        return None, f"the folded copy's logits differ by {gap:.2e}"
    return folded, reason


def distillation_teacher(teacher: nn.Module, masks: dict[str, torch.Tensor] | None,
                         input_size: Sequence[int] | None, enabled: bool = True,
                         logger: logging.Logger | None = None, name: str = "teacher") -> nn.Module:
    """The module to compute a frozen teacher's logits with (BatchNorms on running statistics):
    where ``enabled``, :func:`compact_teacher`'s copy where it applies (else the dense teacher)
    with its BatchNorms folded (:func:`inference_copy`); else ``teacher`` itself. One log line
    says which and why."""
    logger = logger or log
    if not enabled:
        return teacher
    small, reason = compact_teacher(teacher, masks, input_size)
    module = ch.unwrap(teacher) if small is None else small
    folded, folding = inference_copy(module, input_size)
    if small is None:
        logger.info("%s: distilling from the dense model, as expected here (%s; %s).", name, reason, folding)
    else:
        dense_macs, compact_macs = _macs(teacher, input_size), _macs(small, input_size)
        ratio = f"; MACs x{compact_macs / dense_macs:.3f}" if dense_macs and compact_macs else ""
        logger.info("%s: distilling from its compact copy (%s%s; %s).", name, reason, ratio, folding)
    return module if folded is None else folded


def _device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU when it has none)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _macs(model: nn.Module, input_size: Sequence[int] | None) -> int:
    """MACs of one image (0 where they cannot be counted)."""
    try:
        size = input_size or tuple(ch.example_input(model).shape[1:])
        return cost(model, size)[0]
    except Exception:  # noqa: BLE001 (only for the log line)
        return 0
