"""``sst``: selective sparsity training (adds a ``sparsify`` phase to every step but the last).

Only the *selected* BN scales are regularized: the fraction ``--ratio`` r of prunable filters
(BN channel groups from :mod:`toolbox.channels`) with the smallest mean |gamma|, ranked globally
(or per layer) and re-ranked at every epoch start. Modes (``--sst-mode``):

* ``target`` (default): a proximal L1 step after every optimizer step,
  ``gamma <- sign(gamma) * max(|gamma| - tau, 0)`` on the selected gammas, whose threshold
  ``tau = lr * s`` is set per batch by a controller: ``tau = m / R`` with ``m`` the largest
  selected |gamma| left and ``R`` the iterations left in the phase (this one included). The
  largest selected gamma thus falls linearly to 0 whatever the phase length, smaller ones reach 0
  sooner, and at the last batch (``R = 1``) ``tau = m`` zeroes every selected gamma: the ratio r
  is reached by construction. If the iteration count was mis-estimated, the phase end zeroes what
  is left and warns when that removed gammas still above ``--sparsity-threshold``.
* ``subgradient``: Network Slimming's ``grad += s * sign(gamma)`` with fixed ``--s``.
* ``proximal``: the same soft-threshold with a fixed ``tau = lr * s``.

At the phase end the selected filters become ``ctx.masks`` and the achieved sparsity is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolbox import channels as ch
from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption

MODES = ("target", "subgradient", "proximal")


@dataclass(frozen=True)
class SSTSettings:
    """Validated SST options."""

    ratio: float = 0.5
    s: float = 1e-4
    mode: str = "target"
    select: str = "global"
    rerank: str = "epoch"
    threshold: float = 1e-2


def sst_options() -> list[PluginOption]:
    """The options ``sst`` declares."""
    return [
        ch.ratio_option(),
        PluginOption("s", float, 1e-4, "L1 strength on the selected BN scales (subgradient/proximal "
                     "modes; target mode adapts it)", check=lambda v: None if v >= 0 else "s must be >= 0."),
        PluginOption("sst_mode", str, "target", "how the selected gammas are driven to 0", choices=MODES),
        PluginOption("sst_select", str, "global", "rank filters globally or per layer",
                     choices=("global", "layerwise")),
        PluginOption("sst_rerank", str, "epoch", "re-rank the selection at every epoch or only once",
                     choices=("epoch", "once")),
        PluginOption("sparsity_threshold", float, 1e-2, "a filter counts as unimportant when all its "
                     "coupled |gamma| are below this", check=lambda v: None if v > 0 else "must be > 0."),
    ]


def sst_settings(plugin: dict[str, Any]) -> SSTSettings:
    """Read and validate the SST options (missing keys take their defaults)."""
    defaults = SSTSettings()
    cfg = SSTSettings(ratio=float(plugin.get("ratio", defaults.ratio)), s=float(plugin.get("s", defaults.s)),
                      mode=str(plugin.get("sst_mode", defaults.mode)),
                      select=str(plugin.get("sst_select", defaults.select)),
                      rerank=str(plugin.get("sst_rerank", defaults.rerank)),
                      threshold=float(plugin.get("sparsity_threshold", defaults.threshold)))
    if not 0.0 <= cfg.ratio < 1.0:
        raise UsageError(f"--ratio must lie in [0, 1), got {cfg.ratio}.")
    if cfg.s < 0 or cfg.threshold <= 0:
        raise UsageError(f"--s must be >= 0 and --sparsity-threshold > 0, got {cfg.s} and {cfg.threshold}.")
    if cfg.mode not in MODES:
        raise UsageError(f"--sst-mode must be one of {', '.join(MODES)}, got {cfg.mode!r}.")
    if cfg.select not in ("global", "layerwise") or cfg.rerank not in ("epoch", "once"):
        raise UsageError("--sst-select must be global or layerwise and --sst-rerank epoch or once.")
    return cfg


# ----------------------------------------------------------------------------- maths
def select(model: nn.Module, graph: ch.ChannelGraph, ratio: float, layerwise: bool = False) -> list[torch.Tensor]:
    """The ``ratio`` of filters with the smallest mean |gamma| (one bool tensor per group)."""
    return ch.select_smallest(ch.unit_importance(model, graph), ratio, layerwise=layerwise)


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


def target_threshold(peak: torch.Tensor, remaining: int) -> torch.Tensor:
    """The target-mode threshold: the largest selected |gamma| over the iterations left (>= 1)."""
    return peak / max(int(remaining), 1)


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


def plot_gamma_histogram(model: nn.Module, graph: ch.ChannelGraph, selection: list[torch.Tensor],
                         threshold: float, path: Path, title: str) -> None:
    """Histogram of |gamma| (log scale) of selected and kept filters, written to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    peaks = torch.cat(ch.unit_max_gamma(model, graph)).cpu() if graph.groups else torch.zeros(0)
    sel = torch.cat([s.cpu() for s in selection]) if selection else torch.zeros(0, dtype=torch.bool)
    floor = threshold / 100
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = max(float(peaks.max()) if peaks.numel() else 1.0, threshold) * 1.1
    bins = torch.logspace(math.log10(floor), math.log10(top), 50).numpy()
    ax.hist(peaks[~sel].clamp(min=floor).numpy(), bins=bins, alpha=0.7, label="kept")
    ax.hist(peaks[sel].clamp(min=floor).numpy(), bins=bins, alpha=0.7, label="selected (unimportant)")
    ax.axvline(threshold, color="k", linestyle="--", label="threshold")
    ax.set_xscale("log")
    ax.set_xlabel("max |gamma| per filter (values below the x range are piled at its left edge)")
    ax.set_ylabel("filters")
    ax.set_title(title)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")


# ----------------------------------------------------------------------------- plugin
class SST:
    """Selective sparsity training: the plugin's state lives on this object."""

    def __init__(self) -> None:
        """Start unconfigured; :meth:`toolbox_configure` reads the options."""
        self.cfg: SSTSettings | None = None
        self.active = False
        self.graph: ch.ChannelGraph | None = None
        self.selection: list[torch.Tensor] = []
        self.chosen: dict[str, torch.Tensor] = {}
        self.count = 0
        self.done = 0
        self.tau_sum: Any = 0.0
        self.lr_sum = 0.0
        self.s_history: list[float] = []
        self.ratio_history: list[float] = []

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--ratio --s --sst-mode --sst-select --sst-rerank --sparsity-threshold``."""
        return sst_options()

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        """Validate the options (ratio in [0, 1), known modes)."""
        self.cfg = sst_settings(options.plugin)

    @hookimpl
    def toolbox_phases(self, step: int, num_steps: int) -> list[str] | None:
        """Every step but the last gets a ``sparsify`` phase."""
        return ["sparsify"] if step < num_steps else None

    def _settings(self, ctx: Any) -> SSTSettings:
        if self.cfg is None:
            self.cfg = sst_settings(ctx.options.plugin)
        return self.cfg

    def _select(self, ctx: Any) -> None:
        cfg = self._settings(ctx)
        self.selection = select(ctx.model, self.graph, cfg.ratio, layerwise=cfg.select == "layerwise")
        device = next(ctx.model.parameters()).device
        self.chosen = {n: i.to(device) for n, i in ch.selected_channels(self.graph, self.selection).items()}

    @hookimpl
    def toolbox_phase_start(self, ctx: Any) -> None:
        """In ``sparsify``: trace the channel groups and pick the filters to sparsify."""
        self.active = ctx.phase == "sparsify"
        if not self.active:
            return
        self.graph = ch.channel_groups(ctx.model)
        for problem in self.graph.skipped:
            ctx.logger.warning("sst: not sparsifying the group rooted at %s.", problem)
        self._select(ctx)
        self.done, self.s_history, self.ratio_history = 0, [], []

    @hookimpl
    def toolbox_epoch_start(self, ctx: Any) -> None:
        """Reset the epoch's counters; re-rank the selection after the first epoch."""
        self.count, self.tau_sum, self.lr_sum = 0, 0.0, 0.0
        if self.active and ctx.epoch > 0 and self._settings(ctx).rerank == "epoch":
            self._select(ctx)

    @hookimpl
    def toolbox_regularize(self, ctx: Any, model: nn.Module) -> None:
        """Subgradient mode: ``grad += s * sign(gamma)`` on the selected gammas only."""
        cfg = self._settings(ctx)
        if self.active and cfg.mode == "subgradient" and cfg.s > 0:
            add_subgradient(ch.unwrap(model), self.chosen, cfg.s)

    def _total_iterations(self, ctx: Any) -> int:
        """Optimizer steps in the whole phase (the engine sets ``ctx.batches_per_epoch``)."""
        return int(ctx.epochs) * max(int(ctx.batches_per_epoch), 1)

    def _lr(self, ctx: Any) -> float:
        optimizer = ctx.optimizer
        return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else float(ctx.options.lr)

    @hookimpl
    def toolbox_batch_end(self, ctx: Any, model: nn.Module) -> None:
        """Proximal/target modes: soft-threshold the selected gammas after the update."""
        self.count += 1
        if not self.active:
            return
        cfg, model, lr = self._settings(ctx), ch.unwrap(model), self._lr(ctx)
        if cfg.mode == "target":
            remaining = self._total_iterations(ctx) - self.done
            tau: Any = target_threshold(max_chosen_gamma(model, self.chosen), remaining)
            soft_threshold_(model, self.chosen, tau)
        else:
            tau = lr * cfg.s
            if cfg.mode == "proximal":
                soft_threshold_(model, self.chosen, tau)
        self.tau_sum, self.lr_sum = self.tau_sum + tau, self.lr_sum + lr
        self.done += 1

    @hookimpl
    def toolbox_epoch_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        """Log ``sst_s`` and ``sst_ratio`` (achieved ratio).

        ``sst_s`` is the epoch's effective strength ``sum(tau) / sum(lr)``: the constant s that
        would have shrunk the selected gammas as much (equal to ``--s`` in the fixed modes).
        """
        if not self.active:
            return
        cfg = self._settings(ctx)
        s = float(self.tau_sum) / self.lr_sum if self.lr_sum > 0 else 0.0
        ratio, _ = achieved(ctx.model, self.graph, self.selection, cfg.threshold)
        self.s_history.append(s)
        self.ratio_history.append(ratio)
        metrics["sst_s"], metrics["sst_ratio"] = s, ratio

    @hookimpl
    def toolbox_phase_end(self, ctx: Any) -> None:
        """Guarantee (target mode), masks, sparsity metrics, records and the |gamma| histogram."""
        if not self.active:
            return
        self.active = False
        cfg, model = self._settings(ctx), ch.unwrap(ctx.model)
        target = sum(int(s.sum()) for s in self.selection) / max(self.graph.num_units, 1)
        trained, trained_frac = achieved(model, self.graph, self.selection, cfg.threshold)
        if cfg.mode == "target":
            zero_chosen_(model, self.chosen)
        ratio, frac = achieved(model, self.graph, self.selection, cfg.threshold)
        reached = frac >= 1.0
        if trained_frac < 1.0:
            ctx.logger.warning(
                "SST %s AT STEP %d: training brought %.1f%% of the filters below %g, target %.1f%%%s.",
                "FORCED ITS TARGET" if reached else "MISSED ITS TARGET", ctx.step, 100 * trained,
                cfg.threshold, 100 * target,
                "; the rest were zeroed while still carrying signal, expect an accuracy drop"
                if reached else "; re-initializing these filters may destroy what they hold (raise --s or use "
                "--sst-mode target)")
        ctx.masks = ch.selection_to_masks(model, self.graph, self.selection)
        ctx.phase_metrics.update(sparsity=ratio, sparsity_target_reached=int(reached),
                                 sparsity_selected=frac, sparsity_trained=trained)
        ctx.records.setdefault("sst", {})[f"step{ctx.step}"] = {
            "mode": cfg.mode, "target_ratio": target, "achieved_ratio": ratio, "trained_ratio": trained,
            "s_per_epoch": list(self.s_history), "ratio_per_epoch": list(self.ratio_history),
            "selected_filters": sum(int(s.sum()) for s in self.selection), "filters": self.graph.num_units}
        if ctx.run_dir is not None:
            try:
                plot_gamma_histogram(model, self.graph, self.selection, cfg.threshold,
                                     Path(ctx.run_dir) / f"gamma_hist_step{ctx.step}.png",
                                     f"|gamma| after SST, step {ctx.step}")
            except Exception as exc:  # a plot must never end a run
                ctx.logger.warning("sst: could not write the gamma histogram (%s).", exc)
