"""The dry run of ``toolbox check`` / ``toolbox run``: the method's mechanics once, on a dummy batch.

Select the target ratio of filters (smallest |gamma| after randomizing the scales), re-initialize
them (:func:`toolbox.methods.reinit.reinitialize`, as ``aod`` does), zero their scales and remove them
(:func:`toolbox.pruning.compaction.compact`, ``exact=True``), check that the compact model computes what the
masked one does, save a checkpoint with the structure record, reload it
(:func:`~toolbox.storage.checkpoint.model_from_checkpoint`) and check the outputs again. Each stage is a
:class:`StageResult` row with its time and, on failure, the error sentence.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from toolbox.errors import UsageError
from toolbox.methods import reinit
from toolbox.models.modules import batchnorms
from toolbox.pruning.compaction import compact
from toolbox.sparsity import channels as ch
from toolbox.sparsity.bn_l1 import select, zero_chosen_
from toolbox.storage import checkpoint as ckpt

#: Dummy-batch size of the dry run.
BATCH = 4


#: Outputs agree when ``max|a - b| <= TOLERANCE * max(1, max|a|)``.
TOLERANCE = 1e-5


#: Stages whose failure only matters for compaction (``prune``, ``toolbox prune``).
COMPACTION_STAGES = ("compact", "save", "reload")


@dataclass
class StageResult:
    """One row of the dry run: ``ok`` is True, False (failed) or None (skipped)."""

    name: str
    ok: bool | None
    detail: str
    seconds: float = 0.0


def outputs_match(reference: torch.Tensor, other: torch.Tensor) -> tuple[bool, float]:
    """``(agree, max abs difference)`` with :data:`TOLERANCE` relative to the reference's scale."""
    if reference.shape != other.shape:
        return False, float("inf")
    diff = float((reference.float() - other.float()).abs().max()) if reference.numel() else 0.0
    scale = max(1.0, float(reference.float().abs().max())) if reference.numel() else 1.0
    return diff <= TOLERANCE * scale and diff == diff, diff


def error_sentence(exc: BaseException) -> str:
    """An exception as one short sentence (its type and first line)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200] + ("..." if len(text) > 200 else "")
    return text if isinstance(exc, UsageError) else f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def quiet_toolbox_log() -> Iterator[None]:
    """Silence the ``toolbox`` logger's info lines (compact's progress) inside the block."""
    logger = logging.getLogger("toolbox")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def randomize_bns_(model: nn.Module, inputs: torch.Tensor, generator: torch.Generator) -> None:
    """Random gammas in [0.05, 1) and betas in [-0.5, 0.5); running statistics from one batch.

    Distinct |gamma| make the selection meaningful; nonzero betas make the removed filters'
    constants matter (what compaction folds); calibrated statistics keep the outputs of
    order 1 in deep nets, so the tolerance means something.
    """
    bns = list(batchnorms(model).values())
    with torch.no_grad():
        for bn in bns:
            if bn.affine:
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) * 0.95 + 0.05)
                bn.bias.copy_(torch.rand(bn.bias.shape, generator=generator) - 0.5)
        momenta = {bn: bn.momentum for bn in bns}
        model.train()
        try:
            for bn in bns:
                bn.momentum = 1.0
            model(inputs)
        finally:
            for bn, momentum in momenta.items():
                bn.momentum = momentum
            model.eval()


def _forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Eval-mode outputs without gradients."""
    with torch.no_grad():
        return model.eval()(inputs)


@dataclass
class DryRun:
    """State handed from one dry-run stage to the next."""

    arch: str
    num_classes: int
    in_chans: int
    model_kwargs: dict[str, Any]
    ratio: float
    model: nn.Module
    inputs: torch.Tensor
    graph: ch.ChannelGraph
    generator: torch.Generator
    folder: Path
    selection: list[torch.Tensor] = field(default_factory=list)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    small: nn.Module | None = None
    structure: dict[str, Any] | None = None
    reference: torch.Tensor | None = None


def stage_forward(state: DryRun) -> str:
    """Forward the dummy batch through the freshly built model (with random BN scales)."""
    randomize_bns_(state.model, state.inputs, state.generator)
    out = _forward(state.model, state.inputs)
    if out.shape != (state.inputs.shape[0], state.num_classes):
        raise RuntimeError(f"the output has shape {tuple(out.shape)}, expected ({state.inputs.shape[0]}, "
                           f"{state.num_classes})")
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError("the output is not finite")
    return f"output {tuple(out.shape)}"


def stage_select(state: DryRun) -> str:
    """Select the ``ratio`` of filters with the smallest |gamma| (what sst/aod select)."""
    state.selection = select(state.model, state.graph, state.ratio)
    state.masks = ch.selection_to_masks(state.model, state.graph, state.selection)
    chosen = sum(int(s.sum()) for s in state.selection)
    if state.ratio > 0 and chosen == 0:
        raise RuntimeError(f"no filter was selected at ratio {state.ratio}")
    return f"{chosen} of {state.graph.num_units} filters (ratio {state.ratio:g})"


def stage_reinitialize(state: DryRun) -> str:
    """Re-initialize the selected filters as ``aod`` does and check the model still runs."""
    count = reinit.reinitialize(state.model, state.graph, state.selection, reinit.DEFAULT_STRATEGY,
                                reinit.DEFAULT_GAMMA, reinit.DEFAULT_NEXT, state.generator)
    if not bool(torch.isfinite(_forward(state.model, state.inputs)).all()):
        raise RuntimeError("the output is not finite after re-initialization")
    return f"{count} filters ({reinit.DEFAULT_STRATEGY}, gamma {reinit.DEFAULT_GAMMA:g})"


def stage_compact(state: DryRun) -> str:
    """Zero the selected scales, remove those filters (exact) and compare with the masked model."""

    zero_chosen_(state.model, ch.selected_channels(state.graph, state.selection))
    masked = _forward(state.model, state.inputs)
    with quiet_toolbox_log():
        state.small, state.structure = compact(state.model, masks=state.masks, example_inputs=state.inputs[:1],
                                               exact=True)
    state.reference = _forward(state.small, state.inputs)
    agree, diff = outputs_match(masked, state.reference)
    if not agree:
        raise RuntimeError(f"the compact model's outputs differ from the masked model's by {diff:.3g}")
    stats = state.structure["compactions"][-1]
    before = sum(p.numel() for p in state.model.parameters())
    after = sum(p.numel() for p in state.small.parameters())
    return (f"removed {stats['removed']} of {stats['filters']} filters ({stats['carriers']} kept as constant "
            f"carriers), params {before:,} -> {after:,}, max diff {diff:.2g}")


def stage_save(state: DryRun) -> str:
    """Write the compact model and its structure record as a toolbox checkpoint."""

    data = ckpt.make_checkpoint(
        state.small, arch=state.arch, num_classes=state.num_classes, in_chans=state.in_chans,
        model_kwargs=state.model_kwargs, step=1, phase="compact", masks={},
        records={ckpt.STRUCTURE_RECORD: state.structure}, options={}, results=[], optimizer=None,
        input_size=tuple(state.inputs.shape[1:]))
    path = state.folder / "preflight.pt"
    ckpt.save_checkpoint(path, data)
    return f"{path.stat().st_size / 1e6:.2f} MB"


def stage_reload(state: DryRun) -> str:
    """Load the checkpoint (weights_only), rebuild the model from its record and compare outputs."""

    model = ckpt.model_from_checkpoint(ckpt.load_checkpoint(state.folder / "preflight.pt"))
    agree, diff = outputs_match(state.reference, _forward(model, state.inputs))
    if not agree:
        raise RuntimeError(f"the reloaded model's outputs differ from the compact model's by {diff:.3g}")
    return f"outputs identical (max diff {diff:.2g})"


DRY_RUN_STAGES: tuple[tuple[str, Callable[[DryRun], str]], ...] = (
    ("forward", stage_forward), ("select", stage_select), ("re-initialize", stage_reinitialize),
    ("compact", stage_compact), ("save", stage_save), ("reload", stage_reload))


def run_stages(state: DryRun, stages: Sequence[tuple[str, Callable[[DryRun], str]]]) -> list[StageResult]:
    """Run the stages in order; after the first failure the rest are reported as skipped."""
    rows: list[StageResult] = []
    failed: str | None = None
    for name, stage in stages:
        if failed is not None:
            rows.append(StageResult(name, None, f"not run: {failed} failed"))
            continue
        start = time.perf_counter()
        try:
            detail, ok = stage(state), True
        except Exception as exc:  # the report names every failure instead of raising it
            detail, ok, failed = error_sentence(exc), False, name
        rows.append(StageResult(name, ok, detail, time.perf_counter() - start))
    return rows
