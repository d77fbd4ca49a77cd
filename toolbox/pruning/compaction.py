"""Compaction: remove unimportant BN channel groups with torch-pruning, keeping the function.

:func:`compact` removes whole filters (units of :mod:`toolbox.sparsity.channels` groups: the coupled
channels of every BN, producing conv and consuming layer of a residual stream or a depthwise
block) through torch-pruning's :class:`~torch_pruning.DependencyGraph`, so residual additions and
depthwise convs stay consistent. Which filters go is given by masks (``dict[bn_name, BoolTensor]``,
True = unimportant, as ``sst`` writes them) or, without masks, by a ratio of the filters with the
smallest BN |gamma| (torch-pruning's ``BNScaleImportance``, mean over coupled BNs, ranked
globally). The classifier's outputs are never touched.

Absorbing the constants of removed filters (so the function is kept) is :mod:`toolbox.pruning.fold_constants`'s;
the record that rebuilds a compact model is :mod:`toolbox.storage.structure`'s.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

import torch
from torch import nn

from toolbox.data import known_shape
from toolbox.errors import UsageError
from toolbox.models.modules import dummy_input
from toolbox.pruning.fold_constants import GroupPlan, capture_inputs, fold_constants_, plan_group, round_width_
from toolbox.sparsity import channels as ch
from toolbox.storage.structure import STRUCTURE_FORMAT

log = logging.getLogger("toolbox")


# ----------------------------------------------------------------------------- selection
def bn_scale_importance(model: nn.Module, graph: ch.ChannelGraph, dg: Any) -> list[torch.Tensor]:
    """Per group, torch-pruning's BN-scale importance of each unit (mean |gamma| over coupled BNs).

    ``BNScaleImportance`` runs without normalizer, so the scores of different groups compare
    directly (Network Slimming's global threshold).
    """
    import torch_pruning as tp

    scorer = tp.importance.BNScaleImportance(normalizer=None)
    scores = []
    for group in graph.groups:
        first = group.bns[0]
        bn = ch.module(model, first.name)
        tp_group = dg.get_pruning_group(bn, tp.prune_batchnorm_out_channels, list(range(bn.num_features)))
        per_channel = scorer(tp_group).detach().float().cpu()
        scores.append(per_channel[first.index])
    return scores


def select_units(model: nn.Module, graph: ch.ChannelGraph, dg: Any,
                 masks: dict[str, torch.Tensor] | None, ratio: float | None) -> list[torch.Tensor]:
    """The units to remove per group: from ``masks`` when given, else the ``ratio`` smallest.

    A group is never emptied: when every unit of a group is masked, its most important one stays.
    """
    if masks:
        selection = ch.masks_to_selection(graph, masks)
        covered = set(graph.bn_names())
        outside = sorted(n for n, m in masks.items() if n not in covered and bool(torch.as_tensor(m).any()))
        if outside:
            log.warning("compact: masks of %s are outside the prunable channel groups and are ignored.",
                        ", ".join(outside[:5]) + (" ..." if len(outside) > 5 else ""))
    elif ratio is not None:
        selection = ch.select_smallest(bn_scale_importance(model, graph, dg), ratio)
    else:
        raise UsageError("Nothing says which channels to remove: pass masks (from sst) or a ratio in [0, 1).")
    importance = ch.unit_importance(model, graph)
    for group, sel, imp in zip(graph.groups, selection, importance):
        if bool(sel.all()) and group.size > 0:
            keep = int(torch.argmax(imp.cpu()))
            sel[keep] = False
            log.warning("compact: every filter of the group of %s is masked; keeping one.", group.bns[0].name)
    return [s.cpu().bool() for s in selection]


# ----------------------------------------------------------------------------- constants


@torch.no_grad()
def zero_gammas_(model: nn.Module, graph: ch.ChannelGraph, selection: list[torch.Tensor]) -> None:
    """Set the BN scales of the selected units to exactly 0 (every coupled BN)."""
    for group, sel in zip(graph.groups, selection):
        for s in group.bns:
            bn = ch.module(model, s.name)
            bn.weight[s.index[sel].to(bn.weight.device)] = 0.0


# ----------------------------------------------------------------------------- pruning


def prune_group_(model: nn.Module, dg: Any, plan: GroupPlan, names: dict[nn.Module, str]) -> list[dict[str, Any]]:
    """Remove the plan's units with torch-pruning (one group rooted at its first BN); return the ops."""
    import torch_pruning as tp
    from torch_pruning import _helpers

    removed = plan.removed
    if len(removed) == 0:
        return []
    first = plan.group.bns[0]
    bn = ch.module(model, first.name)
    idxs = sorted(int(i) for i in first.index[removed])
    group = dg.get_pruning_group(bn, tp.prune_batchnorm_out_channels, idxs)
    if not dg.check_pruning_group(group):
        raise UsageError(f"Removing {len(idxs)} filters of the group of {first.name} would empty a layer; "
                         "lower the ratio.")
    ops = []
    for dep, item_idxs in group:
        module = dep.target.module
        if module not in names:  # torch-pruning's placeholder ops (ReLU, add, ...) hold no weights
            continue
        if dep.target.type == tp.ops.OPTYPE.PARAMETER:
            raise UsageError(f"Cannot record the pruning of the bare parameter {names[module]}; "
                             "compact supports models built from layers.")
        handler = dep.handler
        out = dg.is_out_channel_pruning_fn(handler)
        pruner = handler.__self__
        size = pruner.get_out_channels(module) if out else pruner.get_in_channels(module)
        plain = {int(i) for i in _helpers.to_plain_idxs(item_idxs)}
        ops.append({"module": names[module], "pruner": type(pruner).__name__, "dim": "out" if out else "in",
                    "size": int(size), "keep": [i for i in range(int(size)) if i not in plain]})
    group.prune()
    return ops


# ----------------------------------------------------------------------------- public API
def _example_inputs(model: nn.Module, example_inputs: torch.Tensor | None) -> torch.Tensor:
    """Two random images shaped like ``example_inputs`` (or the model's cfg), from a fixed seed.

    The run's random streams are left untouched.
    """
    if example_inputs is None:
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            shape = tuple(ch.example_input(model).shape[1:])
    else:
        shape = tuple(example_inputs.shape[1:])
    return dummy_input(shape, 2, seed=0, device=next(model.parameters()).device)


def example_batch(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    """A one-image zero batch of ``input_size`` (C, H, W) on the model's device (fixes the traced shape)."""
    param = next(model.parameters(), None)
    return dummy_input(input_size, 1, device=param.device if param is not None else "cpu", zeros=True)


def checkpoint_input_size(checkpoint: dict[str, Any], model: nn.Module) -> tuple[int, int, int]:
    """The (C, H, W) images a checkpoint was trained on (recorded), else its dataset's known size,
    else the model's timm cfg."""
    if checkpoint.get("input_size"):
        return tuple(int(v) for v in checkpoint["input_size"])  # type: ignore[return-value]
    options = checkpoint.get("options") or {}
    shape = known_shape(str(options.get("dataset")))
    size = None if shape is None else shape[1]
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = int((cfg.get("input_size") or (3, 32, 32))[-1])
    return int(checkpoint["in_chans"]), size, size


def compact(model: nn.Module, masks: dict[str, torch.Tensor] | None = None, ratio: float | None = None,
            example_inputs: torch.Tensor | None = None, exact: bool = True,
            round_to: int = 1) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the masked filters (or the ``ratio`` smallest-|gamma| ones) and return
    ``(compact_model, structure_record)``; ``model`` itself is not changed.

    ``masks`` (``dict[bn_name, BoolTensor]``, True = remove) win over ``ratio``; one of them is
    required. The constants of removed filters are folded into their consumers (see the module
    docstring): when the removed filters' BN scales are 0, the compact model computes what the
    masked model computes (eval mode). ``exact=False`` removes every selected filter and folds
    only interior values into padded spatial convs. ``example_inputs`` fixes the traced input
    shape (default: the model's timm cfg). ``round_to`` > 1 keeps (the most important) selected
    filters until every group's width is a multiple of it (CPU/GPU kernels run fastest on
    multiples of 8 or 16 channels); a kept masked filter with scale 0 still outputs its constant,
    so exactness holds. The compact model keeps the input's training flags
    and device; the record is plain data (see the module docstring).
    """
    import torch_pruning as tp

    source = ch.unwrap(model)
    work = copy.deepcopy(source)
    modes = {name: m.training for name, m in work.named_modules()}
    inputs = _example_inputs(work, example_inputs)
    work.eval()
    graph = ch.channel_groups(work, example_inputs=inputs[:1])
    for problem in graph.skipped:
        log.info("compact: not pruning the group rooted at %s.", problem)
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(work, example_inputs=inputs[:1], verbose=False)
    if round_to < 1:
        raise UsageError(f"round_to must be at least 1, got {round_to}.")
    selection = select_units(work, graph, dg, masks, ratio)
    importance = ch.unit_importance(work, graph)
    gammas = {s.name: ch.module(work, s.name).weight.detach().cpu().clone() for g in graph.groups for s in g.bns}
    zero_gammas_(work, graph, selection)
    captured = capture_inputs(work, [s.name for g in graph.groups for s in g.consumers], inputs)
    names = {m: n for n, m in work.named_modules()}
    plans = [plan_group(work, g, sel, captured, dg, names, exact) for g, sel in zip(graph.groups, selection)]
    if round_to > 1:
        for plan, imp in zip(plans, importance):
            round_width_(work, plan, round_to, imp, gammas)
    unfolded = sorted({name for plan in plans for name in fold_constants_(work, plan)})
    if unfolded:
        log.warning("compact: the removed filters do not reach %s as constants; removing them there is lossy.",
                    ", ".join(unfolded))
    ops = [op for plan in plans for op in prune_group_(work, dg, plan, names)]
    for name, m in work.named_modules():
        m.training = modes.get(name, m.training)
    stats = {"filters": int(graph.num_units), "removed": int(sum(len(p.removed) for p in plans)),
             "carriers": int(sum(len(p.carriers) for p in plans)),
             "spared": int(sum(len(p.spared) for p in plans)), "unfolded": unfolded}
    log.info("compact: removed %d of %d filters (%d more with a constant output stay: they carry that constant "
             "onward; the model computes the same).", stats["removed"], stats["filters"], stats["carriers"])
    return work, {"format": STRUCTURE_FORMAT, "ops": ops, "compactions": [stats]}
