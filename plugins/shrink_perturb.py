"""``shrink_perturb``: the shrink-and-perturb warm start (Ash & Adams, NeurIPS 2020).

At the start of every learn phase after step 1 (``toolbox_model_surgery``) every parameter becomes
``--sp-shrink * theta + --sp-perturb * theta_fresh``, with ``theta_fresh`` a fresh initialization
of the run's architecture (``ctx.create_model()``); then the model trains as fine-tuning.
The BatchNorm running statistics no longer fit the changed weights (evaluated with them the
model sat at chance, FINDINGS 12), so they are re-estimated on the new phase's training images
(``--sp-bn reestimate``, the default) or reset to mean 0 and variance 1 (``--sp-bn reset``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from toolbox.hookspecs import hookimpl
from toolbox.methods import bn_statistics as batchnorm
from toolbox.methods.shrink_perturb import shrink_perturb_
from toolbox.options import PluginOption, PluginSettings
from toolbox.plugin_host import capabilities as cap
from toolbox.sparsity import channels as ch

if TYPE_CHECKING:
    from toolbox.context import Context
    from toolbox.options import RunOptions

BN_CHOICES = ("reestimate", "reset")


class ShrinkPerturb(PluginSettings):
    """Shrink the previous model's weights, add a little fresh initialization, fix BN statistics."""

    provides = frozenset({cap.EDIT_WEIGHTS, cap.WARM_START})
    search_space = {"sp_shrink": {"low": 0.2, "high": 1.0},
                    "sp_perturb": {"low": 0.01, "high": 0.3, "log": True}}  #: what `toolbox compare --trials` tunes
    conflicts = frozenset({cap.EDIT_WEIGHTS, cap.REINIT, cap.FRESH_MODEL})


    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--sp-shrink``, ``--sp-perturb`` and ``--sp-bn``."""
        non_negative = lambda v: None if v >= 0 else "the factor must be >= 0."  # noqa: E731
        return [PluginOption("sp_shrink", float, 0.4, "factor on the previous weights", check=non_negative),
                PluginOption("sp_perturb", float, 0.1, "factor on the fresh initialization added", check=non_negative),
                PluginOption("sp_bn", str, "reestimate", "BatchNorm running statistics after the change: measured "
                             "on the new training images, or reset to mean 0 / variance 1", choices=BN_CHOICES)]

    @hookimpl
    def toolbox_configure(self, options: "RunOptions") -> None:
        """Read (and so validate) the options."""
        self.configure_settings(options.plugin)

    @hookimpl
    def toolbox_model_surgery(self, ctx: "Context", model: nn.Module) -> None:
        """Learn phases after step 1: shrink and perturb in place, then re-estimate or reset BN statistics."""
        if ctx.phase != "learn" or ctx.step < 2:
            return None
        cfg = self.settings(ctx)
        net = ch.unwrap(model)
        count = shrink_perturb_(net, ctx.create_model(), cfg.sp_shrink, cfg.sp_perturb)
        if cfg.sp_bn == "reestimate":
            batches = batchnorm.reestimate(net, ctx.train_batches())
        else:
            batchnorm.reset(net)
            batches = 0
        ctx.records.setdefault("shrink_perturb", {})[f"step{ctx.step}"] = {
            "shrink": cfg.sp_shrink, "perturb": cfg.sp_perturb, "parameters": count, "bn": cfg.sp_bn,
            "bn_batches": batches}
        ctx.logger.info("shrink_perturb: %d parameters <- %g * theta + %g * fresh; BN statistics %s.",
                        count, cfg.sp_shrink, cfg.sp_perturb,
                        f"re-estimated on {batches} batches" if cfg.sp_bn == "reestimate" else "reset")
        return None
