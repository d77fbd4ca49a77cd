"""``lwf``: the Learning-without-Forgetting baseline.

In learn phases of steps > 1 it adds ``lwf_kd = alpha * kd_loss(student, teacher, T)`` towards
the frozen previous model (``ctx.teacher``). No sparsity, no re-initialization.
"""

from __future__ import annotations

from typing import Any

import torch

from toolbox.distill import alpha_option, kd_loss, teacher_bn_option, temperature_option
from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption


class LwF:
    """Distill from the previous step's model while learning the new shard."""

    def __init__(self) -> None:
        """Start with the default ``T`` and ``alpha``; :meth:`toolbox_configure` reads the options."""
        self.T, self.alpha, self.teacher_bn = 4.0, 1.0, "running"

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--T``, ``--alpha`` and ``--teacher-bn`` (shared with aod)."""
        return [temperature_option(), alpha_option(), teacher_bn_option()]

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        """Validate T and alpha; refuse ``aod`` alongside."""
        self.T = float(options.plugin.get("T", 4.0))
        self.alpha = float(options.plugin.get("alpha", 1.0))
        self.teacher_bn = str(options.plugin.get("teacher_bn", "running"))
        if self.T <= 0 or self.alpha < 0:
            raise UsageError(f"--T must be > 0 and --alpha >= 0, got {self.T} and {self.alpha}.")
        if "aod" in options.plugins:
            raise UsageError("lwf and aod both distill from the previous model, which double-counts "
                             "distillation; enable one of them.")

    @hookimpl
    def toolbox_loss(self, ctx: Any, batch: Any, logits: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``lwf_kd`` in learn phases of steps > 1."""
        if ctx.phase != "learn" or ctx.step < 2 or ctx.teacher is None or self.alpha == 0:
            return None
        return {"lwf_kd": self.alpha * kd_loss(logits, ctx.teacher_logits(batch[0], bn=self.teacher_bn), self.T)}
