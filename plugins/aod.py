"""``aod``: diverse re-initialization + adaptive online distillation (learn phases of steps > 1).

At the start of the phase (``toolbox_model_surgery``) exactly the unimportant filters (``ctx.masks``,
from ``sst``; or, without sst, the ``--ratio`` smallest-|gamma| filters) are re-initialized:
the output channels of every conv feeding their coupled BNs, the BN scale (``--reinit-gamma``),
shift (0) and running statistics (mean 0, var 1), and optionally the consuming layers' input
slices (``--reinit-next``). Everything else stays bit-identical.

Re-initialization is :mod:`toolbox.methods.reinit`'s (strategies, and why ``--reinit-gamma`` defaults to
0.01 rather than 0). During training a distillation term ``aod_kd = alpha * w * kd_loss(student, teacher, T)`` is
added, where the adaptive weight ``w`` follows ``--adapt`` and the teacher ``--teacher``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from toolbox.hookspecs import hookimpl
from toolbox.methods.distillation import adaptive_weight, alpha_option, kd_loss, teacher_bn_option, temperature_option
from toolbox.methods.reinit import DEFAULT_GAMMA, DEFAULT_NEXT, DEFAULT_STRATEGY, NEXT, STRATEGIES, reinitialize
from toolbox.methods.teachers import EMATeacher, MutualPeer
from toolbox.options import PluginOption, PluginSettings, option_values
from toolbox.plugin_host import capabilities as cap
from toolbox.runtime import distributed
from toolbox.sparsity import channels as ch

if TYPE_CHECKING:
    from toolbox.context import Context
    from toolbox.options import RunOptions

ADAPT = ("confidence", "accuracy", "constant")
TEACHERS = ("frozen", "ema", "mutual")


@dataclass(frozen=True)
class AODSettings:
    """AOD's options (their defaults and checks live in the :class:`PluginOption` declarations)."""

    ratio: float
    reinit: str
    reinit_gamma: float
    reinit_next: str
    T: float
    alpha: float
    adapt: str
    teacher: str
    ema_decay: float
    teacher_bn: str


def aod_options() -> list[PluginOption]:
    """The options ``aod`` declares."""
    return [
        ch.ratio_option(),
        PluginOption("reinit", str, DEFAULT_STRATEGY, "how re-initialized filters are drawn", choices=STRATEGIES),
        PluginOption("reinit_gamma", float, DEFAULT_GAMMA, "BN scale given to re-initialized filters: small keeps "
                     "the network's function; exactly 0 leaves them dead (ReLU passes no gradient at 0); "
                     "the paper's inferred value is 1"),
        PluginOption("reinit_next", str, DEFAULT_NEXT, "what happens to the consuming layers' input weights of "
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


def _same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None) -> bool:
    """Whether two mask dicts are equal (used to recognize masks aod selected itself)."""
    return b is not None and a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


class AOD(PluginSettings):
    """Re-initialize unimportant filters, then learn the new data with adaptive distillation."""

    provides = frozenset({cap.REINIT, cap.DISTILL_PREVIOUS})
    search_space = {"alpha": {"low": 0.25, "high": 4.0, "log": True}, "T": [2.0, 4.0, 8.0],
                    "teacher_bn": ["running", "batch"]}  #: what `toolbox compare --trials` tunes
    conflicts = frozenset({cap.DISTILL_PREVIOUS})

    def __init__(self) -> None:
        """Start unconfigured; :meth:`toolbox_configure` reads the options."""
        self.cfg: AODSettings | None = None
        self.active = False
        self.teacher: EMATeacher | MutualPeer | None = None
        self.weight_sum: Any = 0.0
        self.batches = 0

    @property
    def net(self) -> nn.Module | None:
        """The EMA or mutual teacher's network (``None`` with the frozen teacher)."""
        return None if self.teacher is None else self.teacher.net

    def read_settings(self, values: dict[str, Any]) -> AODSettings:
        """AOD's settings from the run's option values."""
        return AODSettings(**option_values(aod_options(), values))

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--ratio --reinit --reinit-gamma --reinit-next --T --alpha --adapt --teacher
        --ema-decay --teacher-bn``."""
        return aod_options()

    @hookimpl
    def toolbox_configure(self, options: "RunOptions") -> None:
        """Read (and so validate) the options."""
        self.configure_settings(options.plugin)

    @hookimpl
    def toolbox_phase_start(self, ctx: "Context") -> None:
        """Learn phases after step 1 (with a teacher): set up the EMA or mutual teacher."""
        cfg = self.settings(ctx)
        self.active = ctx.phase == "learn" and ctx.step > 1 and ctx.teacher is not None
        self.teacher, self.weight_sum, self.batches = None, 0.0, 0
        if self.active and cfg.teacher == "ema":
            self.teacher = EMATeacher(ctx.teacher, cfg.ema_decay)
        elif self.active and cfg.teacher == "mutual":
            self.teacher = MutualPeer(ctx.teacher, cfg.T)

    @hookimpl
    def toolbox_model_surgery(self, ctx: "Context", model: nn.Module) -> None:
        """Re-initialize exactly the masked filters.

        Without masks from a sparsity plugin (empty, or the ones aod chose itself at an earlier
        step) the ``--ratio`` filters with the smallest mean |gamma| are chosen now.
        """
        if not self.active:
            return None
        cfg = self.settings(ctx)
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
            selection = ch.select_smallest_gamma(net, graph, cfg.ratio)
            ctx.masks = ch.selection_to_masks(net, graph, selection)
            ctx.records.setdefault("aod", {})["own_masks"] = {k: v.clone() for k, v in ctx.masks.items()}
        count = reinitialize(net, graph, selection, cfg.reinit, cfg.reinit_gamma, cfg.reinit_next)
        ctx.records.setdefault("aod", {})[f"step{ctx.step}"] = {
            "reinitialized_filters": count, "filters": graph.num_units, "strategy": cfg.reinit,
            "gamma": cfg.reinit_gamma, "masks_from": source}
        ctx.logger.info("aod: re-initialized %d of %d filters (%s).", count, graph.num_units, cfg.reinit)
        return None

    def _teacher_logits(self, ctx: "Context", inputs: torch.Tensor, student: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
        cfg = self.settings(ctx)
        if isinstance(self.teacher, MutualPeer):
            return self.teacher.step(ctx, inputs, targets, student)
        if isinstance(self.teacher, EMATeacher):
            return ctx.infer(self.teacher.net, inputs, bn=cfg.teacher_bn)
        return ctx.teacher_logits(inputs, bn=cfg.teacher_bn)

    @hookimpl
    def toolbox_loss(self, ctx: "Context", batch: Any, logits: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``aod_kd``: alpha x adaptive weight x KD towards the teacher."""
        cfg = self.settings(ctx)
        if not self.active or cfg.alpha == 0:
            return None
        inputs, targets = batch
        teacher = self._teacher_logits(ctx, inputs, logits, targets)
        weights = adaptive_weight(teacher, targets, cfg.adapt)
        self.weight_sum = self.weight_sum + weights.mean().detach()
        self.batches += 1
        return {"aod_kd": cfg.alpha * kd_loss(logits, teacher, cfg.T, weights=weights)}

    @hookimpl
    def toolbox_batch_end(self, ctx: "Context", model: nn.Module) -> None:
        """EMA teacher: move it towards the updated student."""
        if self.active and isinstance(self.teacher, EMATeacher):
            self.teacher.update(model)

    @hookimpl
    def toolbox_epoch_end(self, ctx: "Context", metrics: dict[str, float]) -> None:
        """Log ``aod_weight``: the mean adaptive distillation weight of the epoch."""
        if self.active and self.batches:
            metrics["aod_weight"] = distributed.mean_across(float(self.weight_sum) / self.batches)
        self.weight_sum, self.batches = 0.0, 0

    @hookimpl
    def toolbox_state_dict(self, ctx: "Context") -> dict[str, Any] | None:
        """The EMA or mutual teacher's weights (and the peer's optimizer); nothing for the frozen
        teacher. The adaptive-weight sums restart every epoch, so they are not saved."""
        if not self.active or self.teacher is None:
            return None
        return self.teacher.state_dict()

    @hookimpl
    def toolbox_load_state_dict(self, ctx: "Context", state: dict[str, Any]) -> None:
        """Continue a learn phase after a kill: the EMA/mutual teacher as the last epoch left it."""
        if not self.active or self.teacher is None or "net" not in state:
            return
        if isinstance(self.teacher, MutualPeer):
            self.teacher.load_state_dict(state, ctx)
        else:
            self.teacher.load_state_dict(state)

    @hookimpl
    def toolbox_phase_end(self, ctx: "Context") -> None:
        """Drop the phase's EMA/peer network."""
        self.active, self.teacher = False, None
