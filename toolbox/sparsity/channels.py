"""BatchNorm channel groups: what a structured pruner would remove as one "filter".

torch-pruning's dependency graph couples channels that must go together: the outputs of every
BN feeding one residual addition, or the input and output of a depthwise conv. Here each such
coupling is a :class:`ChannelGroup` of ``size`` units; unit ``k`` is one filter, made of channel
``bn.index[k]`` of every coupled BN, output channel ``producer.index[k]`` of every conv feeding
them and input channel ``consumer.index[k]`` of every layer reading them. Masks are
``dict[bn_name, BoolTensor]`` (True = unimportant) keyed by ``model.named_modules()`` names.

Groups whose channel mapping is not a clean bijection (e.g. option-A zero-padding shortcuts,
which the graph cannot see) are left out and named in :attr:`ChannelGraph.skipped`, so only
block-internal channels of such models are prunable.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from toolbox.errors import UsageError
from toolbox.models.modules import dummy_input
from toolbox.options import PluginOption


@dataclass(frozen=True)
class ModuleSlice:
    """Channels of one module in a group: ``index[k]`` is the channel of unit ``k``."""

    name: str
    index: torch.Tensor


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels: ``size`` units, each spread over ``bns``, ``producers``, ``consumers``."""

    size: int
    bns: tuple[ModuleSlice, ...]
    producers: tuple[ModuleSlice, ...]
    consumers: tuple[ModuleSlice, ...]

    @property
    def bn_names(self) -> list[str]:
        """Names of the coupled BatchNorm layers."""
        return [s.name for s in self.bns]


@dataclass
class ChannelGraph:
    """The prunable BN channel groups of a model and the groups left out (with reasons)."""

    groups: list[ChannelGroup]
    skipped: list[str] = field(default_factory=list)

    @property
    def num_units(self) -> int:
        """Number of prunable filters (units) over all groups."""
        return sum(g.size for g in self.groups)

    def bn_names(self) -> list[str]:
        """Every BN layer covered by a group."""
        return [name for g in self.groups for name in g.bn_names]


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, ChannelGraph]]" = weakref.WeakKeyDictionary()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _signature(model: nn.Module) -> tuple:
    """Cheap structural fingerprint: parameter names and shapes."""
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def example_input(model: nn.Module, input_size: Sequence[int] | None = None) -> torch.Tensor:
    """A one-image input for tracing, shaped from ``input_size`` or the model's timm cfg."""
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        input_size = cfg.get("input_size")
    if input_size is None:
        raise UsageError("Cannot trace the model's channel groups: it has no default_cfg['input_size']; "
                         "pass input_size=(C, H, W).")
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:  # timm cfgs keep 3 channels when a model is built with in_chans=1
        input_size = (first_conv.in_channels, *tuple(input_size)[1:])
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # a private generator: tracing must not move the run's global RNG, or a resumed run (whose
    # first trace happens in a fresh process) would draw different numbers than an uninterrupted one
    return dummy_input(input_size, 1, seed=0, device=device)


def classifier_of(model: nn.Module) -> nn.Module | None:
    """The classifier (timm ``get_classifier()``, else the last Linear layer)."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        head = getter()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def channel_groups(model: nn.Module, input_size: Sequence[int] | None = None,
                   example_inputs: torch.Tensor | None = None) -> ChannelGraph:
    """The BN channel groups of ``model``, traced once per model object and cached.

    The classifier is never a root (its outputs are the classes). The trace runs in eval mode
    (BN running statistics are untouched) with every parameter requiring grad (torch-pruning
    traces through autograd, so frozen models work too); training and requires_grad flags are
    restored afterwards.
    """
    model = unwrap(model)
    signature = _signature(model)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    graph = _build(model, example_input(model, input_size) if example_inputs is None else example_inputs)
    _CACHE[model] = (signature, graph)
    return graph


def _build(model: nn.Module, inputs: torch.Tensor) -> ChannelGraph:
    """Trace ``model`` with torch-pruning and convert its groups to :class:`ChannelGroup`."""
    import torch_pruning as tp

    modes = {m: m.training for m in model.modules()}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.eval()
    try:
        for p in frozen:  # torch-pruning traces through autograd: a frozen model would show no groups
            p.requires_grad_(True)
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
        head = classifier_of(model)
        raw = list(dg.get_all_groups(ignored_layers=[head] if head is not None else [],
                                     root_module_types=[nn.Conv2d, nn.Linear]))
    finally:
        for module, mode in modes.items():
            module.training = mode
        for p in frozen:
            p.requires_grad_(False)
    names = {m: n for n, m in model.named_modules()}
    graph = ChannelGraph(groups=[])
    for group in raw:
        converted, problem = _convert(group, dg, names)
        if converted is not None:
            graph.groups.append(converted)
        elif problem:
            graph.skipped.append(problem)
    return graph


def _convert(group: Any, dg: Any, names: dict[nn.Module, str]) -> tuple[ChannelGroup | None, str | None]:
    """One torch-pruning group as a :class:`ChannelGroup`, or ``(None, reason)``."""
    root = group[0].dep.target.module
    size = len(group[0].idxs)
    bns, producers, consumers = {}, {}, {}
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        if not isinstance(module, (_BatchNorm, _ConvNd, nn.Linear)):
            continue
        name = names.get(module, "?")
        idxs, roots = list(item.idxs), list(item.root_idxs)
        if len(idxs) != size or sorted(roots) != list(range(size)) or len(set(idxs)) != size:
            return None, f"{names.get(root, '?')}: channel mapping through {name} is not one-to-one"
        index = torch.empty(size, dtype=torch.long)
        index[torch.tensor(roots)] = torch.tensor(idxs)
        if isinstance(module, _BatchNorm):
            if module.num_features != size:
                return None, f"{names.get(root, '?')}: {name} has {module.num_features} channels, group has {size}"
            if module.affine:
                bns[name] = ModuleSlice(name, index)
        elif dg.is_out_channel_pruning_fn(handler):
            producers[name] = ModuleSlice(name, index)
        elif dg.is_in_channel_pruning_fn(handler):
            consumers[name] = ModuleSlice(name, index)
    if not bns:
        return None, None
    consumers = {n: s for n, s in consumers.items() if n not in producers}
    return ChannelGroup(size, tuple(bns.values()), tuple(producers.values()), tuple(consumers.values())), None


def module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (of the unwrapped model)."""
    return unwrap(model).get_submodule(name)


def _unit_gammas(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """|gamma| of the group's coupled BN channels, shape ``(num_bns, size)`` (detached, float)."""
    rows = []
    for s in group.bns:
        weight = module(model, s.name).weight.detach()
        rows.append(weight.abs().float()[s.index.to(weight.device)])
    return torch.stack(rows)


def unit_importance(model: nn.Module, graph: ChannelGraph) -> list[torch.Tensor]:
    """Per group, the mean |gamma| of each unit over its coupled BN channels."""
    return [_unit_gammas(model, g).mean(0) for g in graph.groups]


def unit_max_gamma(model: nn.Module, graph: ChannelGraph) -> list[torch.Tensor]:
    """Per group, the largest |gamma| of each unit over its coupled BN channels."""
    return [_unit_gammas(model, g).amax(0) for g in graph.groups]


def select_smallest_gamma(model: nn.Module, graph: ChannelGraph, ratio: float,
                          layerwise: bool = False) -> list[torch.Tensor]:
    """The ``ratio`` of filters with the smallest mean |gamma| (one bool tensor per group, see
    :func:`select_smallest`)."""
    return select_smallest(unit_importance(model, graph), ratio, layerwise=layerwise)


def select_smallest(importance: list[torch.Tensor], ratio: float, layerwise: bool = False,
                    keep_min: int = 1) -> list[torch.Tensor]:
    """Select ``round(ratio * units)`` units with the smallest importance.

    Global ranking (default) compares units across groups; ``layerwise`` takes
    ``round(ratio * size)`` per group. Either way at least ``keep_min`` units of every group stay
    unselected (a group is never emptied), the count being filled from the other groups. Ties
    break by position, so the choice is deterministic. Returns one bool tensor per group.
    """
    require_ratio(ratio)
    selected = [torch.zeros(len(imp), dtype=torch.bool, device=imp.device) for imp in importance]
    if layerwise:
        for sel, imp in zip(selected, importance):
            k = min(int(round(ratio * len(imp))), max(len(imp) - keep_min, 0))
            sel[torch.sort(imp, stable=True).indices[:k]] = True
        return selected
    scores, owner, position = [], [], []
    for gi, imp in enumerate(importance):
        imp = imp.float().cpu().clone()
        if keep_min > 0 and len(imp):
            protect = torch.sort(imp, descending=True, stable=True).indices[:keep_min]
            imp[protect] = float("inf")
        scores.append(imp)
        owner.append(torch.full((len(imp),), gi, dtype=torch.long))
        position.append(torch.arange(len(imp)))
    if not scores:
        return selected
    flat, owner_t, pos_t = torch.cat(scores), torch.cat(owner), torch.cat(position)
    k = min(int(round(ratio * len(flat))), int(torch.isfinite(flat).sum()))
    chosen = torch.sort(flat, stable=True).indices[:k]
    for gi, pos in zip(owner_t[chosen].tolist(), pos_t[chosen].tolist()):
        selected[gi][pos] = True
    return selected


def selection_to_masks(model: nn.Module, graph: ChannelGraph,
                       selection: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks (True = unimportant) for every coupled BN of every group, from a unit selection."""
    masks: dict[str, torch.Tensor] = {}
    for g, sel in zip(graph.groups, selection):
        sel = sel.cpu()
        for s in g.bns:
            mask = torch.zeros(module(model, s.name).num_features, dtype=torch.bool)
            mask[s.index[sel]] = True
            masks[s.name] = mask
    return masks


def masks_to_selection(graph: ChannelGraph, masks: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Unit selection from masks: a unit is selected when any of its coupled BN channels is masked."""
    selection = []
    for g in graph.groups:
        sel = torch.zeros(g.size, dtype=torch.bool)
        for s in g.bns:
            if s.name in masks:
                mask = masks[s.name].to(torch.bool).cpu()
                if mask.numel() <= int(s.index.max()):
                    raise UsageError(f"The mask of {s.name} has {mask.numel()} entries but the layer has more "
                                     "channels; the masks belong to another model.")
                sel |= mask[s.index]
        selection.append(sel)
    return selection


def selected_channels(graph: ChannelGraph, selection: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per BN name, the (long) channel indices of the selected units."""
    out: dict[str, torch.Tensor] = {}
    for g, sel in zip(graph.groups, selection):
        for s in g.bns:
            out[s.name] = s.index[sel.cpu()]
    return out


def ratio_option() -> PluginOption:
    """The shared ``--ratio`` option: the fraction of prunable filters treated as unimportant."""
    return PluginOption("ratio", float, 0.5, "fraction r of prunable filters (BN channel groups) made "
                        "unimportant / re-initialized; must lie in [0, 1)", check=check_ratio)


def check_ratio(value: float) -> str | None:
    """Error sentence for a ratio outside [0, 1), else None."""
    return None if 0.0 <= value < 1.0 else "the ratio must lie in [0, 1), e.g. 0.5."


def require_ratio(value: float, flag: str = "--ratio") -> None:
    """Raise :class:`UsageError` (one sentence naming ``flag``) unless ``value`` lies in [0, 1)."""
    if check_ratio(value):
        raise UsageError(f"{flag} must lie in [0, 1), got {value}.")


def ratio_value(declared: dict[str, PluginOption], values: dict[str, Any], default: float = 0.5) -> float:
    """The filter ratio the enabled plugins use: the value of the declared option built by
    :func:`ratio_option` (recognized by its check), else ``default``."""
    for name, opt in declared.items():
        if opt.check is check_ratio:
            return float(values.get(name, opt.default))
    return default

