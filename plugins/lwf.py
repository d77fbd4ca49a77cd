"""``lwf``: the Learning-without-Forgetting baseline.

In learn phases of steps > 1 it adds ``lwf_kd = alpha * kd_loss(student, teacher, T)`` towards
the frozen previous model (``ctx.teacher``). No sparsity, no re-initialization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from toolbox import capabilities as cap
from toolbox.distill import alpha_option, kd_loss, temperature_option
from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption, option_values

if TYPE_CHECKING:
    from toolbox.context import Context


class LwF:
    """Distill from the previous step's model while learning the new shard."""

    provides = frozenset({cap.DISTILL_PREVIOUS})
    conflicts = frozenset({cap.DISTILL_PREVIOUS})

    def __init__(self) -> None:
        """Start with the default ``T`` and ``alpha``; :meth:`toolbox_configure` reads the options."""
        self.T, self.alpha = 4.0, 1.0

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--T`` and ``--alpha`` (shared with aod)."""
        return [temperature_option(), alpha_option()]

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        """Validate T and alpha; refuse another plugin that distills from the previous model (aod)."""
        values = option_values(self.toolbox_options(), options.plugin)
        self.T, self.alpha = values["T"], values["alpha"]
        cap.check_names(options.plugins, {"lwf": self})

    @hookimpl
    def toolbox_loss(self, ctx: "Context", batch: Any, logits: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``lwf_kd`` in learn phases of steps > 1."""
        if ctx.phase != "learn" or ctx.step < 2 or ctx.teacher is None or self.alpha == 0:
            return None
        return {"lwf_kd": self.alpha * kd_loss(logits, ctx.teacher_logits(batch[0]), self.T)}
