"""Compaction: remove unimportant BN channel groups with torch-pruning, keeping the function.

:func:`compact` removes whole filters (units of :mod:`toolbox.channels` groups: the coupled
channels of every BN, producing conv and consuming layer of a residual stream or a depthwise
block) through torch-pruning's :class:`~torch_pruning.DependencyGraph`, so residual additions and
depthwise convs stay consistent. Which filters go is given by masks (``dict[bn_name, BoolTensor]``,
True = unimportant, as ``sst`` writes them) or, without masks, by a ratio of the filters with the
smallest BN |gamma| (torch-pruning's ``BNScaleImportance``, mean over coupled BNs, ranked
globally). The classifier's outputs are never touched.

Absorbing beta
--------------
A filter whose coupled BN scales are all 0 outputs the constant ``beta`` (``act(beta)`` after
the activation, the sum of those constants along a residual stream). Removing it would drop that
constant, so before removal it is folded into every layer that reads it (a "consumer"):

* a Linear layer or a conv whose response to a constant input is spatially uniform (1x1 or
  unpadded convs): the constant contribution ``sum_j c_j * sum(W[:, j])`` goes into the
  consumer's bias, or, for a bias-free conv whose only successor is a BN, into that BN's
  ``running_mean`` (exact in eval mode; in train mode BN removes a constant shift anyway);
* a zero-padded spatial conv (e.g. the 3x3 conv after a ResNet's ``bn1``): its response to a
  constant is *not* uniform (border pixels see the padding), so no bias can hold it. One removed
  filter of the group is kept as a constant **carrier** (its BN scales stay 0) and the consumer's
  weights on the carrier become ``W[:, a] += sum_j (c_j / c_a) W[:, j]``: the kept constant then
  reproduces the removed filters' contribution exactly, borders included. This costs one filter
  per affected group (``exact=False`` removes it too and folds only the interior value, so
  border pixels differ).

Both folds hold for every input size (a bias fold is only used where no position sees padding).
``round_to=N`` spares the most important selected filters until every width is a multiple of N
(fast kernel shapes); a spared filter with scale 0 still outputs its constant, so this is exact too.

The constants are measured, not derived: the removed filters' BN scales are set to 0 on the
working copy and a forward pass records what each consumer reads on those channels. When they are
not constant there (a non-elementwise op such as an attention gate lies between), the consumer
is listed in the compaction's ``unfolded`` stats and the removal is lossy there. When the removed
filters' scales were not 0 (``ratio`` on a trained model, or stale masks) the compaction is lossy
by nature and the fold is the "gamma -> 0" approximation of Ye et al. (2018).

Structure record
----------------
``compact`` returns, with the compact model, a plain-data record that rebuilds the architecture
from a fresh timm model (:func:`apply_structure`), so checkpoints stay plain state_dicts::

    {"format": "toolbox-structure/1",
     "ops": [{"module": "layer1.0.conv1", "pruner": "ConvPruner", "dim": "out",
              "size": 16, "keep": [0, 2, 3, ...]}, ...],
     "compactions": [{"filters": 448, "removed": 190, "carriers": 9, "spared": 0, "unfolded": []}]}

``ops`` are the per-module operations torch-pruning executed, in order: ``dim`` ``out``/``in``
of module ``module`` (named as in ``model.named_modules()``), which had ``size`` channels on that
dim and kept channels ``keep`` (indices into those ``size``). ``pruner`` is the torch-pruning
pruner class that ran (replayed as is). Compacting twice concatenates the ops
(:func:`merge_structures`).
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from toolbox import channels as ch
from toolbox.errors import CheckpointError, UsageError

log = logging.getLogger("toolbox")

STRUCTURE_FORMAT = "toolbox-structure/1"
#: Image sizes of the built-in datasets (the models' timm cfg is the fallback).
DATASET_IMAGE_SIZE = {"synthetic": 16, "fashion_mnist": 32, "cifar100": 32, "tiny_imagenet": 64}
#: A carrier's constant must be at least this fraction of the largest removed constant.
_CARRIER_MIN = 1e-3


# ----------------------------------------------------------------------------- selection
def check_prune_ratio(ratio: float) -> str | None:
    """Error sentence for a pruning ratio outside [0, 1), else None."""
    return None if 0.0 <= ratio < 1.0 else "the ratio must lie in [0, 1), e.g. 0.5."


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
        problem = check_prune_ratio(ratio)
        if problem:
            raise UsageError(f"--ratio={ratio!r}: {problem}")
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
@dataclass
class ConsumerPlan:
    """How one consumer of one group absorbs the removed filters' constants."""

    name: str
    index: torch.Tensor  # input channel of the consumer for every unit of the group
    consts: torch.Tensor | None  # constant read on each selected unit's channel (0 elsewhere; None: not constant)
    kind: str  # "linear", "uniform", "spatial" or "unsupported"
    target: str | None = None  # "bias" or the name of the BN whose running_mean absorbs it
    carrier: int | None = None  # unit kept as carrier for this consumer


@dataclass
class GroupPlan:
    """The removal plan of one channel group."""

    group: ch.ChannelGroup
    selected: torch.Tensor  # units whose BN scales are 0 after planning (removed + carriers)
    consumers: list[ConsumerPlan] = field(default_factory=list)
    carriers: set[int] = field(default_factory=set)
    spared: set[int] = field(default_factory=set)  # selected units kept to round the width

    @property
    def removed(self) -> torch.Tensor:
        """Indices of the units that are removed (selected minus carriers and spared units)."""
        keep = torch.tensor(sorted(self.carriers | self.spared), dtype=torch.long)
        units = torch.nonzero(self.selected).flatten()
        return units[~torch.isin(units, keep)] if len(keep) else units


@torch.no_grad()
def zero_gammas_(model: nn.Module, graph: ch.ChannelGraph, selection: list[torch.Tensor]) -> None:
    """Set the BN scales of the selected units to exactly 0 (every coupled BN)."""
    for group, sel in zip(graph.groups, selection):
        for s in group.bns:
            bn = ch.module(model, s.name)
            bn.weight[s.index[sel].to(bn.weight.device)] = 0.0


@torch.no_grad()
def capture_inputs(model: nn.Module, names: Sequence[str], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named module receives on ``inputs`` (eval mode, training flags restored)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name in set(names):
        def hook(_module: nn.Module, args: tuple, name: str = name) -> None:
            captured[name] = args[0].detach()
        hooks.append(ch.module(model, name).register_forward_pre_hook(hook))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        model(inputs)
    finally:
        for handle in hooks:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return captured


def constant_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
    """The value of channels ``index`` of ``x`` (N, C, ...) if constant over batch and space, else None."""
    values = x[:, index.to(x.device)].float()
    flat = values.transpose(0, 1).reshape(len(index), -1)
    ref = flat[:, :1]
    spread = (flat - ref).abs().amax(dim=1) if flat.shape[1] else torch.zeros(len(index))
    if bool((spread > 1e-6 * (1.0 + ref.abs().squeeze(1))).any()):
        return None
    return ref.squeeze(1).cpu()


def consumer_kind(module: nn.Module) -> str:
    """How a layer responds to a constant input, for every input size.

    ``linear``; ``uniform`` for a conv that never sees zero padding (no padding, or a padding
    mode that repeats the constant), whose response is the same at every position; ``spatial`` for
    a zero-padded conv (border positions see fewer taps); ``unsupported`` for grouped or
    transposed convs and other layer types.
    """
    if isinstance(module, nn.Linear):
        return "linear"
    if not isinstance(module, _ConvNd) or module.transposed or module.groups != 1:
        return "unsupported"
    padding = module.padding
    if isinstance(padding, str):
        unpadded = padding == "valid" or all(k == 1 for k in module.kernel_size)
    else:
        unpadded = all(p == 0 for p in padding)
    return "uniform" if unpadded or module.padding_mode != "zeros" else "spatial"


def bias_target(model: nn.Module, name: str, dg: Any, names: dict[nn.Module, str]) -> str | None:
    """Where a constant added to ``name``'s output can go: ``"bias"``, a successor BN's name, or None.

    A BN qualifies when it is the conv's only successor in torch-pruning's graph and tracks
    running statistics (``running_mean -= delta`` is exact in eval mode; in train mode BN removes
    a constant shift by itself).
    """
    module = ch.module(model, name)
    if getattr(module, "bias", None) is not None:
        return "bias"
    node = dg.module2node.get(module)
    outputs = node.outputs if node is not None else []
    if len(outputs) == 1 and isinstance(outputs[0].module, _BatchNorm):
        bn = outputs[0].module
        if bn.running_mean is not None and bn in names:
            return names[bn]
    return None


def plan_group(model: nn.Module, group: ch.ChannelGroup, sel: torch.Tensor, captured: dict[str, torch.Tensor],
               dg: Any, names: dict[nn.Module, str], exact: bool) -> GroupPlan:
    """Classify every consumer of ``group`` and choose carriers where exactness needs one."""
    plan = GroupPlan(group, sel.clone())
    if not bool(sel.any()):
        return plan
    for s in group.consumers:
        module = ch.module(model, s.name)
        x = captured[s.name]
        consts = None
        picked = constant_channels(x, s.index[sel])
        if picked is not None:
            consts = torch.zeros(group.size)
            consts[sel] = picked
        kind = consumer_kind(module) if consts is not None else "unsupported"
        target = bias_target(model, s.name, dg, names) if kind in ("linear", "uniform", "spatial") else None
        plan.consumers.append(ConsumerPlan(s.name, s.index, consts, kind, target))
    if exact:
        choose_carriers(plan)
    return plan


def _needs_carrier(c: ConsumerPlan, sel: torch.Tensor) -> bool:
    """Whether the removed constants reach ``c`` in a way only a carrier can reproduce."""
    if c.consts is None or c.kind == "unsupported" or not bool(sel.any()):
        return False
    if not bool((c.consts[sel] != 0).any()):
        return False
    return c.kind == "spatial" or c.target is None


def _usable_carrier(c: ConsumerPlan, unit: int, sel: torch.Tensor) -> bool:
    """Whether ``unit``'s constant at ``c`` is large enough to carry the others (not nearly 0)."""
    return abs(float(c.consts[unit])) >= _CARRIER_MIN * float(c.consts[sel].abs().max())


def choose_carriers(plan: GroupPlan) -> None:
    """Greedily keep the fewest selected units such that every consumer that needs one has a
    carrier whose constant there is not (nearly) 0; larger constants win ties."""
    sel = plan.selected
    waiting = [c for c in plan.consumers if _needs_carrier(c, sel)]
    units = torch.nonzero(sel).flatten().tolist()
    while waiting:
        def score(unit: int) -> tuple[int, float]:
            usable = [c for c in waiting if _usable_carrier(c, unit, sel)]
            return len(usable), min((abs(float(c.consts[unit])) for c in usable), default=0.0)

        best = max(units, key=score)  # the unit with the largest constant always qualifies
        plan.carriers.add(best)
        for c in [c for c in waiting if _usable_carrier(c, best, sel)]:
            c.carrier = best
            waiting.remove(c)


def _broadcast(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``values`` (one per input channel) shaped to multiply ``weight[:, channels]``."""
    return values.view((1, -1) + (1,) * (weight.dim() - 2))


@torch.no_grad()
def round_width_(model: nn.Module, plan: GroupPlan, round_to: int, importance: torch.Tensor,
                 gammas: dict[str, torch.Tensor]) -> None:
    """Spare the most important selected units until the kept width is a multiple of ``round_to``
    (or the whole group); their BN scales get their ``gammas`` back, so nothing else changes."""
    removed = plan.removed
    kept = plan.group.size - len(removed)
    extra = min(plan.group.size, -(-kept // round_to) * round_to) - kept
    if extra <= 0:
        return
    order = torch.sort(importance[removed].cpu(), descending=True, stable=True).indices
    spare = removed[order[:extra]]
    plan.spared.update(int(u) for u in spare)
    for s in plan.group.bns:
        bn = ch.module(model, s.name)
        channels = s.index[spare]
        bn.weight[channels.to(bn.weight.device)] = gammas[s.name][channels].to(bn.weight.device)


@torch.no_grad()
def fold_constants_(model: nn.Module, plan: GroupPlan) -> list[str]:
    """Fold the removed units' constants into every consumer; return consumers left unfolded."""
    removed = plan.removed
    unfolded = []
    if len(removed) == 0:
        return unfolded
    for c in plan.consumers:
        if c.kind == "unsupported" or c.consts is None:
            unfolded.append(c.name)
            continue
        consts = c.consts[removed]
        if not bool((consts != 0).any()):
            continue
        module = ch.module(model, c.name)
        weight = module.weight
        channels = c.index[removed].to(weight.device)
        values = consts.to(weight.device, weight.dtype)
        if c.carrier is not None:  # W[:, a] += sum_j (c_j / c_a) W[:, j]
            scale = values / c.consts[c.carrier].to(weight.device, weight.dtype)
            weight[:, int(c.index[c.carrier])] += (weight[:, channels] * _broadcast(scale, weight)).sum(1)
        elif c.target is not None:  # the response to the constants at a position that sees every tap
            delta = (weight[:, channels] * _broadcast(values, weight)).flatten(1).sum(1)
            if c.target == "bias":
                module.bias += delta
            else:
                bn = ch.module(model, c.target)
                bn.running_mean -= delta.to(bn.running_mean.dtype)
        else:
            unfolded.append(c.name)
    return unfolded


# ----------------------------------------------------------------------------- pruning
def _pruner_instances() -> dict[str, Any]:
    """torch-pruning's registered per-layer pruners, by class name."""
    from torch_pruning.pruner import function

    return {type(p).__name__: p for p in function.PrunerBox.values() if p is not None}


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
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    return torch.randn((2, *shape), generator=generator).to(device)


def example_batch(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    """A one-image zero batch of ``input_size`` (C, H, W) on the model's device (fixes the traced shape)."""
    param = next(model.parameters(), None)
    return torch.zeros((1, *input_size), device=param.device if param is not None else "cpu")


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
    log.info("compact: removed %d of %d filters (%d kept as constant carriers).", stats["removed"],
             stats["filters"], stats["carriers"])
    return work, {"format": STRUCTURE_FORMAT, "ops": ops, "compactions": [stats]}


def merge_structures(earlier: dict[str, Any] | None, later: dict[str, Any]) -> dict[str, Any]:
    """The record of two compactions applied one after the other (ops concatenated)."""
    if not earlier:
        return copy.deepcopy(later)
    _check_format(earlier)
    _check_format(later)
    return {"format": STRUCTURE_FORMAT, "ops": list(earlier["ops"]) + list(later["ops"]),
            "compactions": list(earlier.get("compactions", [])) + list(later.get("compactions", []))}


def _check_format(structure: Any) -> None:
    """Raise :class:`CheckpointError` unless ``structure`` is a structure record."""
    if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
        raise CheckpointError("The checkpoint's structure record is not a toolbox-structure/1 record; "
                              "it was written by another toolbox version.")


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Replay a structure record on a freshly built model (in place) and return it.

    After this, ``model.load_state_dict`` of the compact model's state_dict works. Raises
    :class:`CheckpointError` with one sentence when the record does not fit the model.
    """
    _check_format(structure)
    pruners = _pruner_instances()
    for op in structure["ops"]:
        name, dim = op["module"], op["dim"]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"The structure record prunes {name!r}, which this model does not have; "
                                  "the checkpoint was made for another architecture.") from None
        pruner = pruners.get(op["pruner"])
        if pruner is None or dim not in ("out", "in"):
            raise CheckpointError(f"The structure record uses pruner {op['pruner']!r} / dim {dim!r}, "
                                  "which this torch-pruning does not provide; upgrade torch-pruning.")
        size = pruner.get_out_channels(module) if dim == "out" else pruner.get_in_channels(module)
        if size != op["size"]:
            raise CheckpointError(f"The structure record expects {name} to have {op['size']} {dim} channels "
                                  f"but it has {size}; the checkpoint was made for other model options.")
        keep = set(op["keep"])
        removed = [i for i in range(size) if i not in keep]
        if removed:
            (pruner.prune_out_channels if dim == "out" else pruner.prune_in_channels)(module, removed)
    return model


# ----------------------------------------------------------------------------- cost
@torch.no_grad()
def latency(model: nn.Module, input_size: Sequence[int], batch_size: int, repeats: int = 10,
            warmup: int | None = None, channels_last: bool = False) -> float:
    """Median seconds of one forward pass of ``batch_size`` images on the CPU (eval, no grad).

    A CPU copy of the model is timed (the model is not changed); ``warmup`` passes (default
    ``min(3, repeats)``, at least 1) run first. Uses the current ``torch.get_num_threads()``.
    """
    timed = copy.deepcopy(ch.unwrap(model)).cpu().eval()
    x = torch.randn((batch_size, *input_size), generator=torch.Generator().manual_seed(0))
    if channels_last:
        timed, x = timed.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    for _ in range(max(1, min(3, repeats) if warmup is None else warmup)):
        timed(x)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        timed(x)
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def cost(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """``(MACs of one image, parameters)`` counted by torch-pruning on a CPU copy."""
    import torch_pruning as tp

    counted = copy.deepcopy(ch.unwrap(model)).cpu().eval()
    macs, params = tp.utils.count_ops_and_params(counted, torch.zeros((1, *input_size)))
    return int(macs), int(params)


def compaction_report(before: nn.Module, after: nn.Module, input_size: Sequence[int],
                      eval_fn: Callable[[nn.Module], float] | None = None, repeats: int = 10,
                      batch_sizes: Sequence[int] = (1, 256)) -> dict[str, float]:
    """Params, MACs, CPU latency (ms, per batch size) and top-1 before and after, with ratios.

    Keys: ``params_before/after/ratio``, ``macs_before/after/ratio``,
    ``latency_b{n}_ms_before/after`` and ``latency_b{n}_ratio`` for every ``n`` in
    ``batch_sizes`` (skipped when ``repeats`` is 0), and with ``eval_fn(model) -> top-1``:
    ``top1_before/after/change``. Every ratio is after / before; every value is a float.
    """
    report: dict[str, float] = {}
    (macs_b, params_b), (macs_a, params_a) = cost(before, input_size), cost(after, input_size)
    report.update(params_before=float(params_b), params_after=float(params_a), params_ratio=params_a / max(params_b, 1),
                  macs_before=float(macs_b), macs_after=float(macs_a), macs_ratio=macs_a / max(macs_b, 1))
    if repeats > 0:
        for n in batch_sizes:
            t_b = latency(before, input_size, n, repeats) * 1e3
            t_a = latency(after, input_size, n, repeats) * 1e3
            report.update({f"latency_b{n}_ms_before": t_b, f"latency_b{n}_ms_after": t_a,
                           f"latency_b{n}_ratio": t_a / t_b if t_b > 0 else math.nan})
    if eval_fn is not None:
        top_b, top_a = float(eval_fn(before)), float(eval_fn(after))
        report.update(top1_before=top_b, top1_after=top_a, top1_change=top_a - top_b)
    return report


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_input_size(checkpoint: dict[str, Any], model: nn.Module) -> tuple[int, int, int]:
    """The (C, H, W) images a checkpoint was trained on (recorded), else its dataset's known size,
    else the model's timm cfg."""
    if checkpoint.get("input_size"):
        return tuple(int(v) for v in checkpoint["input_size"])  # type: ignore[return-value]
    options = checkpoint.get("options") or {}
    size = DATASET_IMAGE_SIZE.get(str(options.get("dataset")))
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = int((cfg.get("input_size") or (3, 32, 32))[-1])
    return int(checkpoint["in_chans"]), size, size


def prune_checkpoint(path: str | Path, out: str | Path, ratio: float | None = None,
                     repeats: int = 5, batch_sizes: Sequence[int] = (1, 256),
                     input_size: Sequence[int] | None = None, round_to: int = 1) -> dict[str, float]:
    """Compact a toolbox checkpoint and write the compact one to ``out``; return the report.

    An explicit ``ratio`` removes that fraction of filters by BN |gamma| (torch-pruning's BN-scale
    importance); without it the checkpoint's masks (from ``sst``) are used; with neither it is a
    :class:`UsageError`. The written checkpoint holds the compact state_dict, no masks, and the
    structure record merged into ``records["structure"]`` (so compacting twice works); it loads
    with ``load_checkpoint`` + ``model_from_checkpoint``, ``--init`` and ``toolbox eval``.
    ``round_to`` is :func:`compact`'s; ``repeats``/``batch_sizes`` are the latency measurement's
    (``repeats=0`` skips it) and ``input_size`` overrides the (C, H, W) guessed from the dataset.
    """
    from toolbox import checkpoint as ckpt

    data = ckpt.load_checkpoint(path)
    masks = {k: v for k, v in (data.get("masks") or {}).items() if bool(torch.as_tensor(v).any())}
    if ratio is None and not masks:
        raise UsageError(f"{path} has no masks of unimportant filters; pass --ratio R (in [0, 1)) to remove "
                         "the filters with the smallest BN |gamma|.")
    if ratio is not None and check_prune_ratio(ratio):
        raise UsageError(f"--ratio={ratio!r}: {check_prune_ratio(ratio)}")
    model = ckpt.model_from_checkpoint(data)
    size = tuple(input_size) if input_size is not None else checkpoint_input_size(data, model)
    small, structure = compact(model, masks=None if ratio is not None else masks, ratio=ratio,
                               example_inputs=example_batch(model, size), round_to=round_to)
    records = dict(data.get("records") or {})
    records[ckpt.STRUCTURE_RECORD] = merge_structures(records.get(ckpt.STRUCTURE_RECORD), structure)
    result = ckpt.make_checkpoint(
        small, arch=data["arch"], num_classes=data["num_classes"], in_chans=data["in_chans"],
        model_kwargs=data.get("model_kwargs") or {}, step=data["step"], phase=data["phase"], masks={},
        records=records, options=data.get("options") or {}, results=data.get("results") or [], optimizer=None)
    ckpt.save_checkpoint(Path(out), result)
    report = compaction_report(model, small, size, repeats=repeats, batch_sizes=batch_sizes)
    stats = structure["compactions"][-1]
    report.update(filters=float(stats["filters"]), filters_removed=float(stats["removed"]),
                  filters_kept_constant=float(stats["carriers"]), filters_spared=float(stats["spared"]))
    return report
