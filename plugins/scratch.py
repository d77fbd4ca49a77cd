"""``scratch``: every step trains a freshly initialized model on its shard.

The reference that tells whether warm-starting from the previous step helps at all. At the start
of every learn phase after step 1 (``toolbox_model_surgery``) the model is replaced by
``ctx.create_model()`` (a fresh draw of the run's architecture; the run then builds a fresh
optimizer). With ``joint`` it retrains from scratch on all data seen so far.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl

# plugins whose point is to carry knowledge from the previous model, which scratch throws away
CARRY_OVER = ("finetune", "aod", "lwf", "msl", "ewc", "shrink_perturb")


class Scratch:
    """A fresh model at every step (the from-scratch reference)."""

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        """Refuse plugins that build on the previous step's model."""
        clash = [name for name in CARRY_OVER if name in options.plugins]
        if clash:
            raise UsageError(f"scratch starts every step from a fresh model, which defeats {', '.join(clash)}; "
                             "enable scratch alone (or with joint).")

    @hookimpl
    def toolbox_model_surgery(self, ctx: Any, model: nn.Module) -> nn.Module | None:
        """Learn phases after step 1: a freshly initialized model replaces the trained one."""
        if ctx.phase != "learn" or ctx.step < 2:
            return None
        ctx.logger.info("scratch: step %d starts from a freshly initialized model.", ctx.step)
        ctx.masks = {}  # they described the filters of the discarded model
        return ctx.create_model()
