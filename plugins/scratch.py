"""``scratch``: every step trains a freshly initialized model on its shard.

The reference that tells whether warm-starting from the previous step helps at all. At the start
of every learn phase after step 1 (``toolbox_model_surgery``) the model is replaced by
``ctx.create_model()`` (a fresh draw of the run's architecture; the run then builds a fresh
optimizer). With ``joint`` it retrains from scratch on all data seen so far.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from toolbox.hookspecs import hookimpl
from toolbox.plugin_host import capabilities as cap

if TYPE_CHECKING:
    from toolbox.context import Context

# plugins whose point is to carry knowledge from the previous model, which scratch throws away


class Scratch:
    """A fresh model at every step (the from-scratch reference)."""

    provides = frozenset({cap.FRESH_MODEL})
    search_space = {"lr": {"low": 0.01, "high": 0.2, "log": True}}  #: what `toolbox compare --trials` tunes
    conflicts = frozenset({cap.WARM_START, cap.DISTILL_PREVIOUS, cap.DISTILL_EARLIER, cap.REINIT, cap.EDIT_WEIGHTS,
                           cap.ANCHOR_PREVIOUS})

    @hookimpl
    def toolbox_model_surgery(self, ctx: "Context", model: nn.Module) -> nn.Module | None:
        """Learn phases after step 1: a freshly initialized model replaces the trained one."""
        if ctx.phase != "learn" or ctx.step < 2:
            return None
        ctx.logger.info("scratch: step %d starts from a freshly initialized model.", ctx.step)
        ctx.masks = {}  # they described the filters of the discarded model
        return ctx.create_model()
