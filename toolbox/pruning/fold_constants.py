"""Absorbing beta: fold the constants of removed filters into the layers that read them.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from toolbox.sparsity import channels as ch

#: A carrier's constant must be at least this fraction of the largest removed constant.
_CARRIER_MIN = 1e-3


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
