"""``lwf``: the Learning-without-Forgetting baseline.

In learn phases of steps > 1 it adds ``lwf_kd = alpha * kd_loss(student, teacher, T)`` towards
the frozen previous model (``ctx.teacher``). No sparsity, no re-initialization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from toolbox.hookspecs import hookimpl
from toolbox.methods.distillation import alpha_option, kd_loss, teacher_bn_option, temperature_option
from toolbox.options import PluginOption, PluginSettings
from toolbox.plugin_host import capabilities as cap

if TYPE_CHECKING:
    from toolbox.context import Context
    from toolbox.options import RunOptions


class LwF(PluginSettings):
    """Distill from the previous step's model while learning the new shard."""

    provides = frozenset({cap.DISTILL_PREVIOUS})
    #: what `toolbox compare --trials` tunes
    search_space = {"alpha": {"low": 0.25, "high": 4.0, "log": True}, "teacher_bn": ["running", "batch"]}
    conflicts = frozenset({cap.DISTILL_PREVIOUS})

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--T``, ``--alpha`` and ``--teacher-bn`` (shared with aod)."""
        return [temperature_option(), alpha_option(), teacher_bn_option()]

    @hookimpl
    def toolbox_configure(self, options: "RunOptions") -> None:
        """Read (and so validate) ``T``, ``alpha`` and ``teacher_bn``."""
        self.configure_settings(options.plugin)

    @hookimpl
    def toolbox_loss(self, ctx: "Context", batch: Any, logits: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``lwf_kd`` in learn phases of steps > 1."""
        cfg = self.settings(ctx)
        if ctx.phase != "learn" or ctx.step < 2 or ctx.teacher is None or cfg.alpha == 0:
            return None
        return {"lwf_kd": cfg.alpha * kd_loss(logits, ctx.teacher_logits(batch[0], bn=cfg.teacher_bn), cfg.T)}
