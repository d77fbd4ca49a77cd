"""Sparsity training with a pluggable penalty: the machinery every sparsity plugin shares.

A sparsity plugin adds a ``sparsify`` phase to every step but the last, drives the fraction
``--ratio`` r of the prunable filters (BN channel groups, :mod:`toolbox.sparsity.channels`) towards 0 and,
at the phase end, writes their masks into ``ctx.masks`` and reports the achieved sparsity, so that
``aod``, ``msl`` and a compacting pruner work with any of them. :class:`SparsityTraining` holds
all of that; a subclass only says *what* it penalizes (``sst``: L1 on the selected BN scales,
``slimming``: L1 on every BN scale, ``polarization``, ``group_lasso``, ...).

Vocabulary. A *unit* is one filter (one channel of every coupled BN). The *selection* is the r
fraction of units with the smallest :meth:`~SparsityTraining.importance` (global or per layer,
re-ranked at every epoch start or once); those become the masks. The *scope* is where the
penalty acts: the selection (``selective = True``, sst) or every unit (``selective = False``).

Modes (option ``--<prefix>-mode``):

* ``target`` (default): after every optimizer step the selected units take a proximal step of the
  penalty (:meth:`~SparsityTraining.prox_`) whose threshold :class:`~toolbox.sparsity.target_schedule.TargetSchedule`
  sets so that they reach exactly 0 at ``--sparsity-target-at`` of the phase (default half way:
  ``tau = m / R``, ``m`` the largest magnitude left among them, :meth:`~SparsityTraining.peak`, and
  ``R`` the optimizer steps left until then). From there on the selection is frozen (no re-ranking)
  and held at 0 while the rest of the network recovers. Units in the scope but not selected get the
  fixed-strength penalty gradient. The phase end zeroes what is left and warns when that removed
  filters still above ``--sparsity-threshold``.
* ``subgradient``: ``grad += s * dR/dw`` on the scope (:meth:`~SparsityTraining.penalty_grad_`).
* ``proximal``: the proximal step with a fixed ``tau = lr * s`` on the scope.

The default penalty is L1 on the BN scales (gamma): subgradient ``s * sign(gamma)``, proximal step
``gamma <- sign(gamma) * max(|gamma| - tau, 0)``, importance the mean |gamma| of a unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import torch
from torch import nn

from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption, PluginSettings, option_values
from toolbox.plugin_host import capabilities as cap
from toolbox.runtime import distributed
from toolbox.sparsity import channels as ch
from toolbox.sparsity.bn_l1 import achieved, add_subgradient, max_chosen_gamma, soft_threshold_, zero_chosen_
from toolbox.sparsity.plots import plot_controller, plot_gamma_histogram, plot_title
from toolbox.sparsity.target_schedule import TargetSchedule

if TYPE_CHECKING:
    from toolbox.context import Context
    from toolbox.options import RunOptions

SELECTS = ("global", "layerwise")
RERANKS = ("epoch", "once")


# ----------------------------------------------------------------------------- unit sets
@dataclass
class Units:
    """A set of units of a channel graph: a bool tensor per group, and its BN channels on a device.

    ``channels[bn_name]`` holds the (long) channel indices of the set's units in that BN;
    :meth:`index` gives the same for any module slice of a group (producers, consumers).
    """

    graph: ch.ChannelGraph
    selection: list[torch.Tensor]
    device: torch.device
    channels: dict[str, torch.Tensor] = field(default_factory=dict)
    _cache: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, graph: ch.ChannelGraph, selection: list[torch.Tensor], device: torch.device) -> "Units":
        """The set of ``selection`` (one bool tensor per group of ``graph``) with indices on ``device``."""
        selection = [s.cpu() for s in selection]
        channels = {n: i.to(device) for n, i in ch.selected_channels(graph, selection).items()}
        return cls(graph, selection, device, channels)

    @classmethod
    def everything(cls, graph: ch.ChannelGraph, device: torch.device) -> "Units":
        """Every unit of ``graph``."""
        return cls.build(graph, [torch.ones(g.size, dtype=torch.bool) for g in graph.groups], device)

    def count(self) -> int:
        """How many units are in the set."""
        return sum(int(s.sum()) for s in self.selection)

    def index(self, group: int, part: ch.ModuleSlice) -> torch.Tensor:
        """Channel indices (on the device) of the set's units of group ``group`` in module slice ``part``."""
        key = (group, part.name)
        if key not in self._cache:
            self._cache[key] = part.index[self.selection[group]].to(self.device)
        return self._cache[key]


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SparsitySettings:
    """The options of a sparsity plugin (``s`` is its strength option, whatever its name)."""

    ratio: float
    s: float
    mode: str
    select: str
    rerank: str
    threshold: float
    target_at: float


def sparsity_plugins(names: Iterable[str]) -> list[str]:
    """The names among ``names`` whose installed plugin provides ``sparsify`` (:mod:`toolbox.plugin_host.capabilities`)."""
    return cap.providers(names, cap.SPARSIFY)


# ----------------------------------------------------------------------------- the plugin base
class SparsityTraining(PluginSettings):
    """Base class of sparsity plugins: phase, selection, target mode, masks, metrics, records.

    Subclass it, set the class attributes and override the penalty methods
    (:meth:`penalty_grad_`, and where the default L1-on-gamma does not fit :meth:`prox_`,
    :meth:`peak`, :meth:`zero_`, :meth:`importance`, :meth:`after_step_`); register the subclass
    under the ``toolbox.plugins`` entry point. The plugin's state lives on the instance.

    It is longer than a plugin class should be because it is the whole shared machinery of the
    sparsify phase (selection, the three modes, masks, records, resume state); the maths it drives
    are plain functions (:mod:`toolbox.sparsity.bn_l1`, :mod:`toolbox.sparsity.target_schedule`).
    """

    provides: ClassVar[frozenset[str]] = frozenset({cap.SPARSIFY})
    phases: ClassVar[dict[str, int]] = {"sparsify": 1}
    conflicts: ClassVar[frozenset[str]] = frozenset({cap.SPARSIFY})
    name: ClassVar[str] = "sparsity"  #: key of ``ctx.records`` and of log messages
    label: ClassVar[str] = "sparsity training"  #: how plot titles (and, upper-cased, warnings) name it
    prefix: ClassVar[str] = "sparsity"  #: options ``--<prefix>-mode/-select/-rerank``, metrics ``<prefix>_s/_ratio``
    strength: ClassVar[str] = "s"  #: name of the strength option
    default_strength: ClassVar[float] = 1e-4
    strength_help: ClassVar[str] = "strength of the penalty (subgradient/proximal modes; target mode adapts it)"
    mode_help: ClassVar[str] = "how the selected filters are driven to 0"
    select_help: ClassVar[str] = "rank filters globally or per layer"
    rerank_help: ClassVar[str] = "re-rank the selection at every epoch or only once"
    selective: ClassVar[bool] = True  #: penalize only the selection (True) or every unit (False)
    modes: ClassVar[tuple[str, ...]] = ("target", "subgradient", "proximal")

    def __init__(self) -> None:
        """Start unconfigured; :meth:`toolbox_configure` reads the options."""
        self.cfg: SparsitySettings | None = None
        self.active = False
        self.graph: ch.ChannelGraph | None = None
        self.selection: list[torch.Tensor] = []
        self.selected: Units | None = None
        self.scope: Units | None = None
        self.rest: Units | None = None
        self.chosen: dict[str, torch.Tensor] = {}
        self.count = 0
        self.done = 0
        self.tau_sum: Any = 0.0
        self.lr_sum = 0.0
        self.s_history: list[float] = []
        self.ratio_history: list[float] = []

    # ------------------------------------------------------------------ options
    @classmethod
    def declare_options(cls) -> list[PluginOption]:
        """Ratio, strength, mode, select, rerank and threshold options, then :meth:`extra_options`."""
        p = cls.prefix
        return [
            ch.ratio_option(),
            PluginOption(cls.strength, float, cls.default_strength, cls.strength_help,
                         check=lambda v: None if v >= 0 else "the strength must be >= 0."),
            PluginOption(f"{p}_mode", str, cls.modes[0], cls.mode_help, choices=cls.modes),
            PluginOption(f"{p}_select", str, "global", cls.select_help, choices=SELECTS),
            PluginOption(f"{p}_rerank", str, "epoch", cls.rerank_help, choices=RERANKS),
            # 0.5 was chosen on validation data: BENCHMARKS.md, "SST schedule"
            PluginOption("sparsity_target_at", float, 0.5, "target mode: fraction of the phase by which the "
                         "selected filters reach 0; they are then held at 0 (frozen selection) while the rest "
                         "of the network recovers", check=lambda v: None if 0 < v <= 1 else "must lie in (0, 1]."),
            PluginOption("sparsity_threshold", float, 1e-2, "a filter counts as unimportant when all its "
                         "coupled |gamma| are below this", check=lambda v: None if v > 0 else "must be > 0."),
        ] + cls.extra_options()

    @classmethod
    def extra_options(cls) -> list[PluginOption]:
        """Options of the penalty itself (override; default none)."""
        return []

    def read_settings(self, values: dict[str, Any]) -> SparsitySettings:
        """The shared settings and the penalty's own (:meth:`configure_penalty`) from the run's
        option values, each validated by its :class:`PluginOption`."""
        v, p = option_values(self.declare_options(), values), self.prefix
        self.configure_penalty(v)
        return SparsitySettings(ratio=v["ratio"], s=v[self.strength], mode=v[f"{p}_mode"], select=v[f"{p}_select"],
                                rerank=v[f"{p}_rerank"], threshold=v["sparsity_threshold"],
                                target_at=v["sparsity_target_at"])

    def configure_penalty(self, plugin: dict[str, Any]) -> None:
        """Read the (validated) values of :meth:`extra_options` (override; default nothing)."""

    # ------------------------------------------------------------------ the penalty (override)
    def importance(self, model: nn.Module) -> list[torch.Tensor]:
        """Per group, each unit's importance; the smallest are selected (default: mean |gamma|)."""
        return ch.unit_importance(model, self.graph)

    def penalty_grad_(self, model: nn.Module, units: Units, s: float) -> None:
        """Add ``s * dR/dw`` to the gradients of ``units`` (default: L1 on gamma, ``s * sign(gamma)``)."""
        add_subgradient(model, units.channels, s)

    def prox_(self, model: nn.Module, units: Units, tau: Any) -> None:
        """Proximal step of ``tau * R`` on ``units`` (default: soft-threshold of their gammas)."""
        soft_threshold_(model, units.channels, tau)

    def peak(self, model: nn.Module, units: Units) -> torch.Tensor:
        """The largest magnitude :meth:`prox_` must remove from ``units`` (default: max |gamma|)."""
        return max_chosen_gamma(model, units.channels)

    def zero_(self, model: nn.Module, units: Units) -> None:
        """Set ``units`` to exactly 0 at the end of a target-mode phase (default: their gammas)."""
        zero_chosen_(model, units.channels)

    def after_step_(self, model: nn.Module) -> None:
        """Called after every optimizer step of the phase, after the proximal step (default: nothing)."""

    # ------------------------------------------------------------------ hooks
    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--ratio``, the strength, ``--<prefix>-mode/-select/-rerank``, ``--sparsity-target-at``
        and ``--sparsity-threshold``."""
        return self.declare_options()

    @hookimpl
    def toolbox_configure(self, options: "RunOptions") -> None:
        """Read (and so validate) the options (a combination is checked when plugins load)."""
        self.configure_settings(options.plugin)

    @hookimpl
    def toolbox_preflight_ratio(self) -> float | None:
        """The target ratio of unimportant filters (the dry run selects that many)."""
        return self.cfg.ratio if self.cfg is not None else None

    @hookimpl
    def toolbox_phases(self, step: int, num_steps: int) -> list[str] | None:
        """Every step but the last gets a ``sparsify`` phase."""
        return ["sparsify"] if step < num_steps else None

    def _select(self, ctx: "Context") -> None:
        """Rank the units and (re)build the selected set (and, when not selective, the rest)."""
        cfg, model = self.settings(ctx), ch.unwrap(ctx.model)
        self._use_selection(ctx, ch.select_smallest(self.importance(model), cfg.ratio,
                                                    layerwise=cfg.select == "layerwise"))

    def _use_selection(self, ctx: "Context", selection: list[torch.Tensor]) -> None:
        """Make ``selection`` (a bool tensor per group) the selected set; rebuild scope and rest."""
        self.selection = selection
        device = next(ctx.model.parameters()).device
        self.selected = Units.build(self.graph, self.selection, device)
        self.chosen = self.selected.channels
        if self.selective:
            self.scope, self.rest = self.selected, None
        else:
            if self.scope is None:
                self.scope = Units.everything(self.graph, device)
            self.rest = Units.build(self.graph, [~s for s in self.selection], device)

    @hookimpl
    def toolbox_phase_start(self, ctx: "Context") -> None:
        """In ``sparsify``: trace the channel groups and pick the filters to sparsify."""
        self.active = ctx.phase == "sparsify"
        if not self.active:
            return
        self.graph = ch.channel_groups(ctx.model)
        for problem in self.graph.skipped:
            ctx.logger.warning("%s: not sparsifying the group rooted at %s.", self.name, problem)
        self.scope = None
        self._select(ctx)
        self.done, self.s_history, self.ratio_history = 0, [], []

    @hookimpl
    def toolbox_epoch_start(self, ctx: "Context") -> None:
        """Reset the epoch's counters; re-rank the selection after the first epoch."""
        self.count, self.tau_sum, self.lr_sum = 0, 0.0, 0.0
        if self.active and ctx.epoch > 0 and self.settings(ctx).rerank == "epoch" and not self._held(ctx):
            self._select(ctx)

    @hookimpl
    def toolbox_regularize(self, ctx: "Context", model: nn.Module) -> None:
        """Subgradient mode: the penalty on the scope; target mode: on the scope's unselected units."""
        if not self.active:
            return
        cfg = self.settings(ctx)
        if cfg.s <= 0:
            return
        if cfg.mode == "subgradient":
            self.penalty_grad_(ch.unwrap(model), self.scope, cfg.s)
        elif cfg.mode == "target" and self.rest is not None and self.rest.count():
            self.penalty_grad_(ch.unwrap(model), self.rest, cfg.s)

    def _schedule(self, ctx: "Context") -> TargetSchedule:
        """Target mode's schedule over the phase's optimizer steps (the engine sets ``ctx.batches_per_epoch``)."""
        return TargetSchedule(int(ctx.epochs) * max(int(ctx.batches_per_epoch), 1), self.settings(ctx).target_at)

    def _held(self, ctx: "Context") -> bool:
        """Target mode past its deadline: the selection is frozen and held at 0."""
        return self.settings(ctx).mode == "target" and self._schedule(ctx).held(self.done)

    def _lr(self, ctx: "Context") -> float:
        optimizer = ctx.optimizer
        return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else float(ctx.options.lr)

    @hookimpl
    def toolbox_batch_end(self, ctx: "Context", model: nn.Module) -> None:
        """Target mode: the controlled proximal step on the selection; proximal mode: fixed on the scope."""
        self.count += 1
        if not self.active:
            return
        cfg, model, lr = self.settings(ctx), ch.unwrap(model), self._lr(ctx)
        if cfg.mode == "target" and self._held(ctx):
            tau: Any = 0.0
            self.zero_(model, self.selected)
        elif cfg.mode == "target":
            tau = self._schedule(ctx).threshold(self.peak(model, self.selected), self.done)
            self.prox_(model, self.selected, tau)
        else:
            tau = lr * cfg.s
            if cfg.mode == "proximal":
                self.prox_(model, self.scope, tau)
        self.after_step_(model)
        self.tau_sum, self.lr_sum = self.tau_sum + tau, self.lr_sum + lr
        self.done += 1

    @hookimpl
    def toolbox_epoch_end(self, ctx: "Context", metrics: dict[str, float]) -> None:
        """Log ``<prefix>_s`` and ``<prefix>_ratio`` (achieved ratio).

        ``<prefix>_s`` is the epoch's effective strength ``sum(tau) / sum(lr)``: the constant s
        that would have shrunk the selected units as much (equal to the strength in fixed modes).
        """
        if not self.active:
            return
        cfg = self.settings(ctx)
        s = float(self.tau_sum) / self.lr_sum if self.lr_sum > 0 else 0.0
        ratio, _ = achieved(ctx.model, self.graph, self.selection, cfg.threshold)
        self.s_history.append(s)
        self.ratio_history.append(ratio)
        metrics[f"{self.prefix}_s"], metrics[f"{self.prefix}_ratio"] = s, ratio

    @hookimpl
    def toolbox_state_dict(self, ctx: "Context") -> dict[str, Any] | None:
        """In ``sparsify``: optimizer steps done (the target schedule), the selection and the
        per-epoch histories; the epoch's ``tau``/``lr`` sums restart every epoch and are not saved."""
        if not self.active:
            return None
        return {"done": int(self.done), "selection": [s.detach().cpu().clone() for s in self.selection],
                "s_history": list(self.s_history), "ratio_history": list(self.ratio_history)}

    @hookimpl
    def toolbox_load_state_dict(self, ctx: "Context", state: dict[str, Any]) -> None:
        """Continue a ``sparsify`` phase after a kill from :meth:`toolbox_state_dict`'s state."""
        if not self.active:
            return
        device = next(ctx.model.parameters()).device
        self._use_selection(ctx, [torch.as_tensor(s, dtype=torch.bool).to(device) for s in state["selection"]])
        self.done = int(state["done"])
        self.s_history = [float(v) for v in state["s_history"]]
        self.ratio_history = [float(v) for v in state["ratio_history"]]

    @hookimpl
    def toolbox_phase_end(self, ctx: "Context") -> None:
        """Guarantee (target mode), masks, sparsity metrics, records, the |gamma| histogram and the
        plot of the achieved ratio and effective strength per epoch."""
        if not self.active:
            return
        self.active = False
        cfg, model = self.settings(ctx), ch.unwrap(ctx.model)
        if not self.selective and cfg.mode != "target":
            self._select(ctx)  # masks: the r fraction the penalty made least important
        target = self.selected.count() / max(self.graph.num_units, 1)
        trained, trained_frac = achieved(model, self.graph, self.selection, cfg.threshold)
        if cfg.mode == "target":
            self.zero_(model, self.selected)
        ratio, frac = achieved(model, self.graph, self.selection, cfg.threshold)
        reached = frac >= 1.0
        if trained_frac < 1.0:
            ctx.logger.warning(
                "%s %s AT STEP %d: training brought %.1f%% of the filters below %g, target %.1f%%%s.",
                self.label.upper(), "FORCED ITS TARGET" if reached else "MISSED ITS TARGET", ctx.step, 100 * trained,
                cfg.threshold, 100 * target,
                "; the rest were zeroed while still carrying signal, expect an accuracy drop"
                if reached else f"; re-initializing these filters may destroy what they hold (raise "
                f"--{self.strength.replace('_', '-')} or use --{self.prefix.replace('_', '-')}-mode target)")
        ctx.masks = ch.selection_to_masks(model, self.graph, self.selection)
        ctx.phase_metrics.update(sparsity=ratio, sparsity_target_reached=int(reached),
                                 sparsity_selected=frac, sparsity_trained=trained)
        ctx.records.setdefault(self.name, {})[f"step{ctx.step}"] = {
            "mode": cfg.mode, "target_ratio": target, "achieved_ratio": ratio, "trained_ratio": trained,
            "s_per_epoch": list(self.s_history), "ratio_per_epoch": list(self.ratio_history),
            "selected_filters": self.selected.count(), "filters": self.graph.num_units}
        if ctx.run_dir is not None and distributed.is_main():  # only rank 0 writes the run directory
            try:
                plot_gamma_histogram(model, self.graph, self.selection, cfg.threshold,
                                     Path(ctx.run_dir) / f"gamma_hist_step{ctx.step}.png",
                                     "|gamma| after " + plot_title(self.label, ctx.options, ctx.step))
            except Exception as exc:  # a plot must never end a run
                ctx.logger.warning("%s: could not write the gamma histogram (%s).", self.name, exc)
            try:
                plot_controller(self.s_history, self.ratio_history, target,
                                Path(ctx.run_dir) / f"sparsity_step{ctx.step}.png",
                                plot_title(self.label, ctx.options, ctx.step, f" ({cfg.mode} mode)"))
            except Exception as exc:  # a plot must never end a run
                ctx.logger.warning("%s: could not write the sparsity plot (%s).", self.name, exc)
