"""``msl``: multi-step loss, distillation during SST so sparsifying keeps accumulated knowledge.

It acts in the ``sparsify`` phases a sparsity plugin adds (``sst``, or any plugin whose class
declares ``provides = {"sparsify"}``: ``slimming``, ``polarization``, ``group_lasso``, ...).

In ``sparsify`` phases of steps > 1 (and at step 1 with ``--msl-first-step true``) the term
``msl_kd = msl_weight * kd_loss(student, teacher, T)`` pulls the model being sparsified towards
``ctx.teacher`` (the AOD model of the current step; at step 1 the model before SST). With
``--msl-teachers all`` the end-of-sparsify models of the earlier steps are added (loaded once per
phase from the run directory), all teachers weighted equally so the weights sum to
``--msl-weight``. Their filters that SST zeroed are removed (:mod:`toolbox.pruning.compact_teacher`:
same logits, fewer MACs; ``--compact-teacher false`` keeps them dense).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from toolbox.hookspecs import hookimpl
from toolbox.methods.distillation import kd_loss, teacher_bn_option, temperature_option
from toolbox.models.modules import freeze
from toolbox.options import PluginOption, PluginSettings, option_values
from toolbox.plugin_host import capabilities as cap
from toolbox.pruning.compact_teacher import distillation_teacher

if TYPE_CHECKING:
    from toolbox.context import Context
    from toolbox.options import RunOptions


@dataclass(frozen=True)
class MSLSettings:
    """MSL's options (their defaults and checks live in the :class:`PluginOption` declarations)."""

    T: float
    weight: float
    teachers: str
    first_step: bool
    teacher_bn: str


def msl_options() -> list[PluginOption]:
    """The options ``msl`` declares."""
    return [
        temperature_option(),
        PluginOption("msl_weight", float, 1.0, "weight of the multi-step distillation term",
                     check=lambda v: None if v >= 0 else "the weight must be >= 0."),
        PluginOption("msl_teachers", str, "previous", "distill from the current step's AOD model only, "
                     "or also from every earlier step's SST model", choices=("previous", "all")),
        PluginOption("msl_first_step", bool, False, "also distill from the pre-SST model during step 1's SST"),
        teacher_bn_option(),
    ]


def multi_teacher_kd(student: torch.Tensor, teachers: list[torch.Tensor], T: float, weight: float) -> torch.Tensor:
    """``weight`` times the mean over teachers of ``kd_loss(student, teacher, T)``."""
    return weight * torch.stack([kd_loss(student, t, T) for t in teachers]).mean()


def default_loader() -> Callable[[Any, int, str], nn.Module] | None:
    """``toolbox.storage.checkpoint.load_phase_model`` when available."""
    try:
        from toolbox.storage.checkpoint import load_phase_model
    except ImportError:  # pragma: no cover - the core provides it
        return None
    return load_phase_model


class MSL(PluginSettings):
    """Multi-step loss: KD towards the current and (optionally) earlier steps' models during SST."""

    provides = frozenset({cap.DISTILL_EARLIER})
    search_space = {"msl_weight": {"low": 0.25, "high": 4.0, "log": True}}  #: what `toolbox compare --trials` tunes
    requires = frozenset({cap.SPARSIFY})

    def __init__(self, loader: Callable[[Any, int, str], nn.Module] | None = None) -> None:
        """``loader(run_dir, step, phase)`` loads earlier models (default: the checkpoint loader)."""
        self.cfg: MSLSettings | None = None
        self.loader = loader
        self.active = False
        self.extra: list[nn.Module] = []

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--T --msl-weight --msl-teachers --msl-first-step --teacher-bn``."""
        return msl_options()

    def read_settings(self, values: dict[str, Any]) -> MSLSettings:
        """MSL's settings from the run's option values."""
        v = option_values(msl_options(), values)
        return MSLSettings(T=v["T"], weight=v["msl_weight"], teachers=v["msl_teachers"], first_step=v["msl_first_step"],
                           teacher_bn=v["teacher_bn"])

    @hookimpl
    def toolbox_configure(self, options: "RunOptions") -> None:
        """Read (and so validate) the options."""
        self.configure_settings(options.plugin)

    @hookimpl
    def toolbox_phase_start(self, ctx: "Context") -> None:
        """Sparsify phases after step 1 (or at step 1 when asked): load the earlier teachers."""
        cfg = self.settings(ctx)
        self.extra = []
        self.active = (ctx.phase == "sparsify" and ctx.teacher is not None
                       and (ctx.step > 1 or cfg.first_step) and cfg.weight > 0)
        if not self.active or cfg.teachers != "all" or ctx.step < 2:
            return
        loader = self.loader or default_loader()
        if ctx.run_dir is None or loader is None:
            ctx.logger.warning("msl: no run directory to load earlier models from; using the current teacher only.")
            return
        for step in range(1, ctx.step):
            model = freeze(loader(ctx.run_dir, step, "sparsify").to(ctx.device))
            compact = ctx.options.compact_teacher and cfg.teacher_bn == "running"  # exact with running statistics
            self.extra.append(distillation_teacher(model, None, ctx.input_size, compact, ctx.logger,
                                                   name=f"msl: step {step}'s model"))

    @hookimpl
    def toolbox_loss(self, ctx: "Context", batch: Any, logits: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``msl_kd``: equal-weight KD towards every teacher, weights summing to ``--msl-weight``."""
        if not self.active:
            return None
        cfg = self.settings(ctx)
        inputs = batch[0]
        teachers = [ctx.teacher_logits(inputs, bn=cfg.teacher_bn)]
        teachers += [ctx.infer(m, inputs, bn=cfg.teacher_bn) for m in self.extra]
        return {"msl_kd": multi_teacher_kd(logits, teachers, cfg.T, cfg.weight)}

    @hookimpl
    def toolbox_phase_end(self, ctx: "Context") -> None:
        """Release the earlier teachers."""
        self.active, self.extra = False, []
