"""``aod``: diverse re-initialization + adaptive online distillation (learn phases of steps > 1).

At the start of the phase (``toolbox_prune``) exactly the unimportant filters (``ctx.masks``,
from ``sst``; or, without sst, the ``--ratio`` smallest-|gamma| filters) are re-initialized:
the output channels of every conv feeding their coupled BNs, the BN scale (``--reinit-gamma``),
shift (0) and running statistics (mean 0, var 1), and optionally the consuming layers' input
slices (``--reinit-next``). Everything else stays bit-identical.

``--reinit-gamma`` defaults to 0.01, not 0: with gamma = beta = 0 a filter's BN output is exactly
0 for every input (all coupled BNs of a residual channel are re-initialized together, so the
shortcut adds 0 as well), ReLU's gradient at 0 is 0, and the filter never receives a gradient
again: "re-initialized" filters would stay dead (measured: exactly 0 after an AOD phase). A small
gamma keeps the network's function nearly intact and lets the filters grow. Strategies (``--reinit``):

* ``kaiming``: Kaiming-normal (fan-in, ReLU gain), as PyTorch's ``kaiming_normal_``;
* ``orthogonal``: Gaussian draws with the span of the layer's kept filters projected out, each
  rescaled to the Kaiming norm ``sqrt(2 / fan_in) * sqrt(fan_in)``; Kaiming when the span is full;
* ``diverse``: as orthogonal, and the new filters are also orthogonal to each other (as many as
  the free dimensions allow, the rest only orthogonal to the kept ones), with a per-filter norm
  of the Kaiming norm times a factor drawn uniformly from [0.5, 1.5];
* ``none``: nothing is re-initialized (the "without re-init" ablation; distillation only).

During training a distillation term ``aod_kd = alpha * w * kd_loss(student, teacher, T)`` is
added, where the adaptive weight ``w`` follows ``--adapt`` and the teacher ``--teacher``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from toolbox import channels as ch
from toolbox import distributed
from toolbox.distill import alpha_option, kd_loss, teacher_bn_option, temperature_option
from toolbox.errors import UsageError
from toolbox.engine import autocast_context
from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption

STRATEGIES = ("kaiming", "orthogonal", "diverse", "none")
NEXT = ("keep", "zero", "kaiming")
ADAPT = ("confidence", "accuracy", "constant")
TEACHERS = ("frozen", "ema", "mutual")


@dataclass(frozen=True)
class AODSettings:
    """Validated AOD options."""

    ratio: float = 0.5
    reinit: str = "kaiming"
    reinit_gamma: float = 0.01
    reinit_next: str = "keep"
    T: float = 4.0
    alpha: float = 1.0
    adapt: str = "confidence"
    teacher: str = "frozen"
    ema_decay: float = 0.999
    teacher_bn: str = "running"


def aod_options() -> list[PluginOption]:
    """The options ``aod`` declares."""
    return [
        ch.ratio_option(),
        PluginOption("reinit", str, "kaiming", "how re-initialized filters are drawn", choices=STRATEGIES),
        PluginOption("reinit_gamma", float, 0.01, "BN scale given to re-initialized filters: small keeps "
                     "the network's function; exactly 0 leaves them dead (ReLU passes no gradient at 0); "
                     "the paper's inferred value is 1"),
        PluginOption("reinit_next", str, "keep", "what happens to the consuming layers' input weights of "
                     "re-initialized filters", choices=NEXT),
        temperature_option(),
        alpha_option(),
        PluginOption("adapt", str, "confidence", "per-sample/batch distillation weight: teacher probability "
                     "of the true label, teacher batch accuracy, or 1", choices=ADAPT),
        PluginOption("teacher", str, "frozen", "distillation teacher: the frozen SST model, an EMA of the "
                     "student, or a co-trained peer (mutual learning)", choices=TEACHERS),
        PluginOption("ema_decay", float, 0.999, "decay of the EMA teacher",
                     check=lambda v: None if 0 <= v < 1 else "the decay must lie in [0, 1)."),
        teacher_bn_option(),
    ]


def aod_settings(plugin: dict[str, Any]) -> AODSettings:
    """Read and validate the AOD options (missing keys take their defaults)."""
    d = AODSettings()
    cfg = AODSettings(**{k: type(getattr(d, k))(plugin.get(k, getattr(d, k))) for k in d.__dataclass_fields__})
    if not 0.0 <= cfg.ratio < 1.0:
        raise UsageError(f"--ratio must lie in [0, 1), got {cfg.ratio}.")
    if cfg.T <= 0 or cfg.alpha < 0 or not 0 <= cfg.ema_decay < 1:
        raise UsageError(f"--T must be > 0, --alpha >= 0 and --ema-decay in [0, 1); "
                         f"got {cfg.T}, {cfg.alpha}, {cfg.ema_decay}.")
    for name, value, allowed in (("reinit", cfg.reinit, STRATEGIES), ("reinit-next", cfg.reinit_next, NEXT),
                                 ("adapt", cfg.adapt, ADAPT), ("teacher", cfg.teacher, TEACHERS)):
        if value not in allowed:
            raise UsageError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}.")
    return cfg


# ----------------------------------------------------------------------------- re-initialization
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


# ----------------------------------------------------------------------------- distillation
def adaptive_weight(teacher_logits: torch.Tensor, targets: torch.Tensor, rule: str) -> torch.Tensor:
    """Distillation weight per sample: teacher's p(true label), its batch accuracy, or 1."""
    teacher_logits = teacher_logits.detach().float()
    if rule == "confidence":
        return F.softmax(teacher_logits, dim=1).gather(1, targets.view(-1, 1)).squeeze(1)
    if rule == "accuracy":
        acc = (teacher_logits.argmax(dim=1) == targets).float().mean()
        return acc.expand(targets.shape[0])
    return torch.ones(targets.shape[0], device=teacher_logits.device)


@torch.no_grad()
def ema_update(ema: nn.Module, student: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * student`` for float parameters and buffers; others copied."""
    ema_state, student_state = ema.state_dict(), ch.unwrap(student).state_dict()
    for key, value in ema_state.items():
        src = student_state[key].detach()
        if value.dtype.is_floating_point:
            value.mul_(decay).add_(src.to(value), alpha=1.0 - decay)
        else:
            value.copy_(src)


def _same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None) -> bool:
    """Whether two mask dicts are equal (used to recognize masks aod selected itself)."""
    return b is not None and a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# ----------------------------------------------------------------------------- plugin
class AOD:
    """Re-initialize unimportant filters, then learn the new data with adaptive distillation."""

    def __init__(self) -> None:
        """Start unconfigured; :meth:`toolbox_configure` reads the options."""
        self.cfg: AODSettings | None = None
        self.active = False
        self.net: nn.Module | None = None
        self.peer_optimizer: torch.optim.Optimizer | None = None
        self.weight_sum: Any = 0.0
        self.batches = 0

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--ratio --reinit --reinit-gamma --reinit-next --T --alpha --adapt --teacher --ema-decay``."""
        return aod_options()

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        """Validate the options; refuse ``lwf`` alongside (two distillation terms)."""
        self.cfg = aod_settings(options.plugin)
        if "lwf" in options.plugins:
            raise UsageError("aod and lwf both distill from the previous model, which double-counts "
                             "distillation; enable one of them.")

    def _settings(self, ctx: Any) -> AODSettings:
        if self.cfg is None:
            self.cfg = aod_settings(ctx.options.plugin)
        return self.cfg

    @hookimpl
    def toolbox_phase_start(self, ctx: Any) -> None:
        """Learn phases after step 1 (with a teacher): set up the EMA or mutual teacher."""
        cfg = self._settings(ctx)
        self.active = ctx.phase == "learn" and ctx.step > 1 and ctx.teacher is not None
        self.net, self.peer_optimizer, self.weight_sum, self.batches = None, None, 0.0, 0
        if not self.active or cfg.teacher == "frozen":
            return
        self.net = copy.deepcopy(ctx.teacher)
        if cfg.teacher == "ema":
            self.net.eval()
        else:
            self.net.train()
            for p in self.net.parameters():
                p.requires_grad_(True)

    @hookimpl
    def toolbox_prune(self, ctx: Any, model: nn.Module) -> None:
        """Re-initialize exactly the masked filters.

        Without masks from a sparsity plugin (empty, or the ones aod chose itself at an earlier
        step) the ``--ratio`` filters with the smallest mean |gamma| are chosen now.
        """
        if not self.active:
            return None
        cfg = self._settings(ctx)
        net = ch.unwrap(model)
        graph = ch.channel_groups(net)
        if ctx.masks and not _same_masks(ctx.masks, ctx.records.get("aod", {}).get("own_masks")):
            unknown = sorted(set(ctx.masks) - set(graph.bn_names()))
            if unknown:
                ctx.logger.warning("aod: masks of %s are not in a prunable group; left as they are.", ", ".join(unknown))
            selection = ch.masks_to_selection(graph, ctx.masks)
            source = "sparsity plugin"
        else:
            source = "aod (|gamma| ranking)"
            selection = ch.select_smallest(ch.unit_importance(net, graph), cfg.ratio)
            ctx.masks = ch.selection_to_masks(net, graph, selection)
            ctx.records.setdefault("aod", {})["own_masks"] = {k: v.clone() for k, v in ctx.masks.items()}
        count = reinitialize(net, graph, selection, cfg.reinit, cfg.reinit_gamma, cfg.reinit_next)
        ctx.records.setdefault("aod", {})[f"step{ctx.step}"] = {
            "reinitialized_filters": count, "filters": graph.num_units, "strategy": cfg.reinit,
            "gamma": cfg.reinit_gamma, "masks_from": source}
        ctx.logger.info("aod: re-initialized %d of %d filters (%s).", count, graph.num_units, cfg.reinit)
        return None

    def _peer_optimizer(self, ctx: Any) -> torch.optim.Optimizer:
        """SGD for the mutual peer, with the student optimizer's momentum and weight decay."""
        group = ctx.optimizer.param_groups[0] if ctx.optimizer is not None else {
            "lr": ctx.options.lr, "momentum": ctx.options.momentum, "weight_decay": ctx.options.weight_decay}
        return torch.optim.SGD(self.net.parameters(), lr=group["lr"], momentum=group.get("momentum", 0.0),
                               weight_decay=group.get("weight_decay", 0.0))

    def _teacher_logits(self, ctx: Any, inputs: torch.Tensor, student: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
        cfg = self._settings(ctx)
        if cfg.teacher == "frozen":
            return ctx.teacher_logits(inputs, bn=cfg.teacher_bn)
        if cfg.teacher == "ema":
            return ctx.infer(self.net, inputs, bn=cfg.teacher_bn)
        if self.peer_optimizer is None:
            self.peer_optimizer = self._peer_optimizer(ctx)
        if ctx.optimizer is not None:
            for g in self.peer_optimizer.param_groups:
                g["lr"] = ctx.optimizer.param_groups[0]["lr"]
        with autocast_context(ctx.device, ctx.options.precision):
            peer = self.net(inputs).float()
        peer_loss = F.cross_entropy(peer, targets) + kd_loss(peer, student.detach(), cfg.T)
        self.peer_optimizer.zero_grad(set_to_none=True)
        peer_loss.backward()
        distributed.average_gradients(self.net)  # multi-process: the peer stays identical on every process
        self.peer_optimizer.step()
        return peer.detach()

    @hookimpl
    def toolbox_loss(self, ctx: Any, batch: Any, logits: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``aod_kd``: alpha x adaptive weight x KD towards the teacher."""
        cfg = self._settings(ctx)
        if not self.active or cfg.alpha == 0:
            return None
        inputs, targets = batch
        teacher = self._teacher_logits(ctx, inputs, logits, targets)
        weights = adaptive_weight(teacher, targets, cfg.adapt)
        self.weight_sum = self.weight_sum + weights.mean().detach()
        self.batches += 1
        return {"aod_kd": cfg.alpha * kd_loss(logits, teacher, cfg.T, weights=weights)}

    @hookimpl
    def toolbox_batch_end(self, ctx: Any, model: nn.Module) -> None:
        """EMA teacher: move it towards the updated student."""
        if self.active and self._settings(ctx).teacher == "ema":
            ema_update(self.net, model, self._settings(ctx).ema_decay)

    @hookimpl
    def toolbox_epoch_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        """Log ``aod_weight``: the mean adaptive distillation weight of the epoch."""
        if self.active and self.batches:
            metrics["aod_weight"] = distributed.mean_across(float(self.weight_sum) / self.batches)
        self.weight_sum, self.batches = 0.0, 0

    @hookimpl
    def toolbox_state_dict(self, ctx: Any) -> dict[str, Any] | None:
        """The EMA or mutual teacher's weights (and the peer's optimizer); nothing for the frozen
        teacher. The adaptive-weight sums restart every epoch, so they are not saved."""
        if not self.active or self.net is None:
            return None
        state: dict[str, Any] = {"net": self.net.state_dict()}
        if self.peer_optimizer is not None:
            state["peer_optimizer"] = self.peer_optimizer.state_dict()
        return state

    @hookimpl
    def toolbox_load_state_dict(self, ctx: Any, state: dict[str, Any]) -> None:
        """Continue a learn phase after a kill: the EMA/mutual teacher as the last epoch left it."""
        if not self.active or self.net is None or "net" not in state:
            return
        self.net.load_state_dict(state["net"])
        if "peer_optimizer" in state:
            self.peer_optimizer = self._peer_optimizer(ctx)
            self.peer_optimizer.load_state_dict(state["peer_optimizer"])

    @hookimpl
    def toolbox_phase_end(self, ctx: Any) -> None:
        """Drop the phase's EMA/peer network."""
        self.active, self.net, self.peer_optimizer = False, None, None
