"""``prune``: compact the final model with torch-pruning (a ``compact`` phase at the last step).

At the start of the ``compact`` phase (``toolbox_model_surgery``) the unimportant filters are removed
from the model with :func:`toolbox.pruning.compaction.compact`: the filters of ``ctx.masks`` (the masks
``sst`` wrote), or, with ``--prune-ratio R`` (> 0), the fraction R of filters with the smallest
BN |gamma| (torch-pruning's BN-scale importance, ranked globally); an explicit ratio wins over
masks. The compact model replaces the old one (the run moves it to the device and rebuilds the
optimizer), its structure record is merged into ``ctx.records["structure"]`` (so checkpoints,
resume, ``toolbox eval`` and ``--init`` rebuild it) and ``ctx.masks`` is emptied. The phase then
trains ``--compact-epochs`` epochs (default 0: no fine-tuning); ``--compact-round-to N`` keeps
layer widths multiples of N (default 1: remove exactly the selected filters). It reports params, MACs and CPU
latency at batch 1 and 256 before and after (``--compact-latency-repeats`` timed passes each;
0 skips timing).

In the pipeline ``sst,aod,msl,prune`` the last step is an AOD learn phase: ``ctx.masks`` still
holds the previous step's SST masks, but AOD re-initialized those filters and trained them, so
their BN scales are no longer 0 and removing them costs accuracy (the compaction is exact only
for filters whose scales are 0). That is the pipeline's intended behaviour, not a bug; use
``--prune-ratio R`` to remove the smallest-|gamma| filters of the final model instead, and
``--compact-epochs`` to fine-tune after the removal.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption, PluginSettings
from toolbox.plugin_host import capabilities as cap
from toolbox.pruning import compaction as cp
from toolbox.pruning.cost import compaction_report
from toolbox.sparsity import channels as ch
from toolbox.storage.structure import merge_structures

if TYPE_CHECKING:
    from torch import nn

    from toolbox.context import Context
    from toolbox.options import RunOptions

log = logging.getLogger("toolbox")
PHASE = "compact"
BATCH_SIZES = (1, 256)


def prune_options() -> list[PluginOption]:
    """The options ``prune`` declares."""
    return [
        PluginOption("prune_ratio", float, 0.0, "remove this fraction of filters by BN |gamma| (torch-pruning "
                     "BN-scale importance) instead of the sst masks; 0 = use the masks; must lie in [0, 1)",
                     check=lambda v: ch.check_ratio(v)),
        PluginOption("compact_epochs", int, 0, "fine-tuning epochs after compaction (the compact phase)",
                     check=lambda v: None if v >= 0 else "must be >= 0."),
        PluginOption("compact_round_to", int, 1, "keep (the most important) selected filters until every "
                     "layer's width is a multiple of this (8 or 16 suit CPU/GPU kernels; exactness holds)",
                     check=lambda v: None if v >= 1 else "must be >= 1."),
        PluginOption("compact_latency_repeats", int, 5, "timed CPU passes per latency measurement at batch "
                     "1 and 256 (median); 0 skips timing", check=lambda v: None if v >= 0 else "must be >= 0."),
    ]


def run_input_size(ctx: "Context", model: Any) -> tuple[int, int, int]:
    """The (C, H, W) of the run's images: ``ctx.input_size`` when the core provides it, else
    the dataset's known size, else the model's timm cfg."""
    size = getattr(ctx, "input_size", None)
    if size:
        return tuple(int(v) for v in size)  # type: ignore[return-value]
    first = next((m for m in model.modules() if hasattr(m, "in_channels")), None)
    in_chans = int(getattr(first, "in_channels", 3))
    fake = {"in_chans": in_chans, "options": {"dataset": ctx.options.dataset}}
    return cp.checkpoint_input_size(fake, model)


class Prune(PluginSettings):
    """Compaction at the last step; the plugin's state lives on this object."""

    provides = frozenset({cap.COMPACT})
    phases = {PHASE: 2}

    def __init__(self) -> None:
        """Start unconfigured; :meth:`toolbox_configure` reads the options."""
        self.report: dict[str, float] = {}

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--prune-ratio --compact-epochs --compact-round-to --compact-latency-repeats``."""
        return prune_options()

    @hookimpl
    def toolbox_configure(self, options: "RunOptions") -> None:
        """Validate the ratio and set the compact phase's epochs (``phase_epochs`` wins if set)."""
        cfg = self.configure_settings(options.plugin)
        options.phase_epochs.setdefault(PHASE, cfg.compact_epochs)

    @hookimpl
    def toolbox_preflight_ratio(self) -> float | None:
        """``--prune-ratio`` when given (the dry run then removes that fraction), else None."""
        return self.cfg.prune_ratio if self.cfg is not None and self.cfg.prune_ratio > 0 else None

    @hookimpl
    def toolbox_phases(self, step: int, num_steps: int) -> list[str] | None:
        """The last step gets a ``compact`` phase."""
        return [PHASE] if step == num_steps else None

    @hookimpl
    def toolbox_model_surgery(self, ctx: "Context", model: nn.Module) -> nn.Module | None:
        """In ``compact``: remove the filters, record the structure, empty the masks."""
        if ctx.phase != PHASE:
            return None
        self.report = {}
        cfg = self.settings(ctx)
        use_ratio = cfg.prune_ratio > 0
        masks = {k: v for k, v in (ctx.masks or {}).items() if bool(v.any())}
        if not use_ratio and not masks:
            ctx.logger.warning("prune: no masks and --prune-ratio 0; nothing to compact.")
            return None
        if use_ratio and masks:
            ctx.logger.info("prune: --prune-ratio %g given; ignoring the sst masks.", cfg.prune_ratio)
        size = run_input_size(ctx, model)
        example = cp.example_batch(model, size)
        small, structure = cp.compact(model, masks=None if use_ratio else masks,
                                      ratio=cfg.prune_ratio if use_ratio else None, example_inputs=example,
                                      round_to=cfg.compact_round_to)
        ctx.records["structure"] = merge_structures(ctx.records.get("structure"), structure)
        ctx.masks = {}
        stats = structure["compactions"][-1]
        self.report = compaction_report(model, small, size, repeats=cfg.compact_latency_repeats, batch_sizes=BATCH_SIZES)
        self.report.update(filters=float(stats["filters"]), filters_removed=float(stats["removed"]),
                           filters_kept_constant=float(stats["carriers"]), filters_spared=float(stats["spared"]))
        ctx.logger.info("prune: removed %d of %d filters; MACs x%.3f, params x%.3f.", stats["removed"],
                        stats["filters"], self.report["macs_ratio"], self.report["params_ratio"])
        return small

    @hookimpl
    def toolbox_state_dict(self, ctx: "Context") -> dict[str, Any] | None:
        """In ``compact``: the compaction report (measured in ``toolbox_model_surgery``, which a resumed
        phase does not call again)."""
        return {"report": dict(self.report)} if ctx.phase == PHASE and self.report else None

    @hookimpl
    def toolbox_load_state_dict(self, ctx: "Context", state: dict[str, Any]) -> None:
        """Restore the compaction report of a ``compact`` phase continued after a kill."""
        self.report = {k: float(v) for k, v in state.get("report", {}).items()}

    @hookimpl
    def toolbox_phase_end(self, ctx: "Context") -> None:
        """Put the compaction report (flat floats) into the phase's metrics."""
        if ctx.phase == PHASE and self.report:
            ctx.phase_metrics.update(self.report)
