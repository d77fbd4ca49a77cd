"""``ewc``: Elastic Weight Consolidation, online variant (Schwarz et al., 2018).

At the end of each step's last phase (every step but the run's last, whose estimate nothing
would use) the diagonal Fisher is estimated on that phase's training images
(``ctx.train_batches()``: the step's data, unaugmented) and folded into the running estimate,
``F <- --ewc-gamma * F + F_new``; the parameters at that moment become the anchor ``theta*``.
In the learn and sparsify phases of later steps the loss gets
``ewc_penalty = --ewc-lambda / 2 * sum F (theta - theta*)^2``.

Fisher and anchor live in ``ctx.records["ewc"]`` (CPU tensors), which every phase checkpoint and
``partial.pt`` save, so a killed run resumes with them. With the per-sample Fisher and the mean
cross-entropy, ``--ewc-lambda 1`` with ``--ewc-gamma 1`` weighs each earlier shard like the new
one (the Laplace approximation's weight for equal shards); tune it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from toolbox.hookspecs import hookimpl
from toolbox.methods.ewc import TARGETS, diagonal_fisher, ewc_penalty, online_update
from toolbox.options import PluginOption, PluginSettings
from toolbox.plugin_host import capabilities as cap
from toolbox.runtime import distributed
from toolbox.sparsity import channels as ch

if TYPE_CHECKING:
    from toolbox.context import Context
    from toolbox.options import RunOptions

PENALIZED_PHASES = ("learn", "sparsify")


class EWC(PluginSettings):
    """Pull parameters that mattered for earlier steps towards their values then."""

    provides = frozenset({cap.ANCHOR_PREVIOUS, cap.WARM_START})
    search_space = {"ewc_lambda": {"low": 0.1, "high": 30.0, "log": True}}  #: what `toolbox compare --trials` tunes
    conflicts = frozenset({cap.FRESH_MODEL})

    def __init__(self) -> None:
        """No Fisher estimate yet; :meth:`toolbox_configure` reads the options."""
        self.fisher: dict[str, torch.Tensor] | None = None
        self.anchor: dict[str, torch.Tensor] | None = None

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--ewc-lambda``, ``--ewc-gamma`` and ``--ewc-fisher``."""
        return [PluginOption("ewc_lambda", float, 1.0, "weight of the EWC penalty",
                             check=lambda v: None if v >= 0 else "the weight must be >= 0."),
                PluginOption("ewc_gamma", float, 1.0, "online decay of the earlier Fisher estimates (1: plain sum)",
                             check=lambda v: None if 0 <= v <= 1 else "the decay must lie in [0, 1]."),
                PluginOption("ewc_fisher", str, "labels", "log-likelihood of the labels (empirical Fisher) or of "
                             "the model's own predictions", choices=TARGETS)]

    @hookimpl
    def toolbox_configure(self, options: "RunOptions") -> None:
        """Read (and so validate) the options."""
        self.configure_settings(options.plugin)

    @hookimpl
    def toolbox_phase_start(self, ctx: "Context") -> None:
        """Load the running Fisher and the anchor (saved in the run's records) onto the device."""
        state = ctx.records.get("ewc")
        self.fisher = self.anchor = None
        if state and ctx.phase in PENALIZED_PHASES and self.settings(ctx).ewc_lambda > 0:
            self.fisher = {n: t.to(ctx.device) for n, t in state["fisher"].items()}
            self.anchor = {n: t.to(ctx.device) for n, t in state["anchor"].items()}

    @hookimpl
    def toolbox_loss(self, ctx: "Context") -> dict[str, torch.Tensor] | None:
        """``ewc_penalty`` once an earlier step left a Fisher estimate."""
        if self.fisher is None or self.anchor is None:
            return None
        return {"ewc_penalty": ewc_penalty(ch.unwrap(ctx.model), self.fisher, self.anchor,
                                            self.settings(ctx).ewc_lambda)}

    @hookimpl(trylast=True)
    def toolbox_phase_end(self, ctx: "Context") -> None:
        """At the end of a step's last phase (not the run's last step): update Fisher and anchor.
        Called after the other plugins' phase ends (``trylast``), so the anchor is the final model."""
        self.fisher = self.anchor = None
        last_phase = not ctx.step_phases or ctx.phase == ctx.step_phases[-1]
        if not last_phase or ctx.step >= ctx.num_steps:
            return
        model = ch.unwrap(ctx.model)
        distributed.broadcast_module(model)  # multi-process: rank 0's BN statistics, so every Fisher is equal
        new = {n: t.cpu() for n, t in diagonal_fisher(model, ctx.train_batches(), self.settings(ctx).ewc_fisher).items()}
        earlier = ctx.records.get("ewc")
        fisher = online_update(earlier["fisher"] if earlier else None, new, self.settings(ctx).ewc_gamma)
        anchor = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if n in fisher}
        steps = (earlier["steps"] if earlier else []) + [ctx.step]
        ctx.records["ewc"] = {"fisher": fisher, "anchor": anchor, "steps": steps}
        ctx.phase_metrics["ewc_fisher_mean"] = float(sum(f.sum() for f in new.values()) /
                                                    max(1, sum(f.numel() for f in new.values())))
        ctx.logger.info("ewc: Fisher of step %d estimated (mean %.3g).", ctx.step, ctx.phase_metrics["ewc_fisher_mean"])
