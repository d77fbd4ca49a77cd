"""Preflight ("fail fast"): can this backbone be sparsified, re-initialized and pruned?

Before an hour-long run, :func:`preflight` builds the model through timm, traces it with
torch-pruning's dependency graph (:mod:`toolbox.channels`) and reports

* the prunable BN channel groups and filters per stage (BN layers grouped by their top-level
  module: ``layer1``, ``layer2``, ... or ``blocks.3`` for a container of stages);
* the BN layers no group covers (e.g. the residual streams of option-A CIFAR ResNets, whose
  zero-padding shortcut ``F.pad`` the graph cannot see; fix: ``model_kwargs: {shortcut: B}``);
* grouped convolutions (``1 < groups``, not depthwise) inside prunable groups: removing single
  channels can break their groups (torch-pruning 1.6 fails there; the dry run's compact row tells);
* conv layers with no BatchNorm after them (their filters have no scale to regularize);
* whether the model has any BatchNorm layer with a learnable scale at all;

and, unless ``dry_run=False``, runs the method's mechanics once on a dummy batch: select the
target ratio of filters (smallest |gamma| after randomizing the scales), re-initialize them
(``aod``'s :func:`~toolbox_plugins.aod.reinitialize`), zero their scales and remove them
(:func:`toolbox.compact.compact`, ``exact=True``), check that the compact model computes what the
masked one does, save a checkpoint with the structure record, reload it
(:func:`~toolbox.checkpoint.model_from_checkpoint`) and check the outputs again. Each stage is a
row with its time and, on failure, the error sentence.

The :attr:`PreflightReport.verdict` is ``ok``, ``warn`` or ``refuse`` with one sentence naming the
layer and the fix. ``refuse`` needs a sparsity or pruning plugin (:func:`needs_check`): without
one, what would be refused is only a warning. A failure of the compaction stages (compact, save,
reload) refuses only with ``prune`` enabled: ``sst``/``aod`` runs still work, and the warning says
that the result cannot be compacted afterwards.

:func:`check_run` is what ``toolbox run`` calls (trace, selection and the dry run; a second or two
on the CPU even for ``cifar_resnet110``): it raises :class:`~toolbox.errors.UsageError` on
``refuse`` and logs the warnings. :func:`check_command` is ``toolbox check``: it resolves the
dataset's image shape and prints the report (:func:`render`). The global random state is left as
it was (the run's initialization does not depend on whether the check ran).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from toolbox import channels as ch
from toolbox.errors import UsageError
from toolbox.models import build_model

log = logging.getLogger("toolbox")

OK, WARN, REFUSE = "ok", "warn", "refuse"
#: Severity of a finding that is only reported (it never changes the verdict).
INFO = "info"
#: Severity order of verdicts and issues.
SEVERITY = {INFO: 0, OK: 0, WARN: 1, REFUSE: 2}
#: Convs without a BatchNorm after them warn from this share of all convs on (below: info,
#: e.g. the squeeze-excitation convs of EfficientNets).
CONV_WITHOUT_BN_WARN = 0.25
#: Plugins (besides those declaring ``provides_sparsify``) whose run needs prunable BN groups.
PRUNING_PLUGINS = ("aod", "prune")
#: ``toolbox check`` without ``--plugins`` checks the paper's pipeline plus compaction.
DEFAULT_CHECK_PLUGINS = ("sst", "aod", "msl", "prune")
#: (in_chans, image_size, num_classes) of the built-in datasets, so ``toolbox check`` need not
#: load them; other (registered) datasets are loaded once to read their shape.
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar100": (3, 32, 100),
    "tiny_imagenet": (3, 64, 200),
    "fashion_mnist": (1, 32, 10),
    "synthetic": (3, 16, 10),
}
#: Containers whose numbered children are stages (``blocks.3``), not blocks of one stage.
STAGE_CONTAINERS = ("blocks", "stages", "features", "layers")
#: Dry-run ratio when the configured one is 0 (nothing would be selected).
FALLBACK_RATIO = 0.5
#: Dummy-batch size of the dry run.
BATCH = 4
#: Outputs agree when ``max|a - b| <= TOLERANCE * max(1, max|a|)``.
TOLERANCE = 1e-5
#: Stages whose failure only matters for compaction (``prune``, ``toolbox prune``).
COMPACTION_STAGES = ("compact", "save", "reload")
#: How many layer names a sentence lists before "and N more".
LIST_NAMES = 4


# ----------------------------------------------------------------------------- report types
@dataclass
class StageSummary:
    """Prunable BN channels of one stage (BN layers sharing a top-level module)."""

    stage: str
    bn_layers: int = 0
    channels: int = 0
    prunable_bn_layers: int = 0
    prunable_channels: int = 0
    groups: int = 0
    filters: int = 0


@dataclass
class StageResult:
    """One row of the dry run: ``ok`` is True, False (failed) or None (skipped)."""

    name: str
    ok: bool | None
    detail: str
    seconds: float = 0.0


@dataclass
class Issue:
    """A finding: ``severity`` is ``info``, ``warn`` or ``refuse`` (before the plugin check); one sentence."""

    severity: str
    sentence: str


@dataclass
class PreflightReport:
    """Everything :func:`preflight` found; :attr:`verdict` and :attr:`reason` sum it up."""

    arch: str
    model_kwargs: dict[str, Any]
    input_size: tuple[int, int, int]
    num_classes: int
    plugins: list[str]
    ratio: float
    relevant: bool = False
    bn_layers: int = 0
    convs: int = 0
    groups: int = 0
    filters: int = 0
    stages: list[StageSummary] = field(default_factory=list)
    unprunable_bns: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pad_shortcuts: list[str] = field(default_factory=list)
    grouped_convs: list[str] = field(default_factory=list)
    convs_without_bn: list[str] = field(default_factory=list)
    dry_run: list[StageResult] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    verdict: str = OK
    reason: str = ""
    seconds: float = 0.0

    @property
    def has_batchnorm(self) -> bool:
        """Whether the model has a BatchNorm layer with a learnable scale."""
        return self.bn_layers > 0

    def stage(self, name: str) -> StageResult | None:
        """The dry-run row called ``name`` (None when the dry run did not reach it)."""
        return next((r for r in self.dry_run if r.name == name), None)


# ----------------------------------------------------------------------------- helpers
def needs_check(plugins: Sequence[str]) -> bool:
    """Whether ``plugins`` include a sparsity plugin (``provides_sparsify``), ``aod`` or ``prune``."""
    from toolbox.sparsity import sparsity_plugins

    names = list(plugins)
    return any(p in PRUNING_PLUGINS for p in names) or bool(sparsity_plugins(names))


def name_list(names: Sequence[str], limit: int = LIST_NAMES) -> str:
    """``a, b, c and 4 more``: at most ``limit`` names of a list for a sentence."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def stage_of(model: nn.Module, name: str) -> str:
    """The stage of a module name: its top-level module (``layer2``), or the first two parts
    (``blocks.3``) when the top-level module is a container of stages."""
    parts = name.split(".")
    if len(parts) < 3:
        return parts[0]
    top = getattr(model, parts[0], None)
    numbered = parts[1].isdigit()
    nested = isinstance(top, (nn.Sequential, nn.ModuleList)) and any(
        isinstance(child, (nn.Sequential, nn.ModuleList)) for child in top.children())
    return ".".join(parts[:2]) if numbered and (nested or parts[0] in STAGE_CONTAINERS) else parts[0]


def affine_bns(model: nn.Module) -> dict[str, _BatchNorm]:
    """The BatchNorm layers with a learnable scale, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.affine}


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


# ----------------------------------------------------------------------------- static analysis
def summarize_stages(model: nn.Module, graph: ch.ChannelGraph) -> list[StageSummary]:
    """Per stage: BN layers and channels, how many are prunable, the groups and filters.

    A group spanning several stages (a residual stream starting at the stem) counts in the
    stage most of its BN layers belong to.
    """
    stages: dict[str, StageSummary] = {}
    covered = set(graph.bn_names())
    for name, bn in affine_bns(model).items():
        row = stages.setdefault(stage_of(model, name), StageSummary(stage_of(model, name)))
        row.bn_layers += 1
        row.channels += bn.num_features
        if name in covered:
            row.prunable_bn_layers += 1
            row.prunable_channels += bn.num_features
    for group in graph.groups:
        home = Counter(stage_of(model, n) for n in group.bn_names).most_common(1)[0][0]
        row = stages.setdefault(home, StageSummary(home))
        row.groups += 1
        row.filters += group.size
    return list(stages.values())


def pad_shortcuts(model: nn.Module) -> list[str]:
    """Names of option-A zero-padding shortcuts (toolbox's ``PadShortcut`` or any ``*Pad*Shortcut``)."""
    return [n for n, m in model.named_modules()
            if "pad" in type(m).__name__.lower() and "shortcut" in type(m).__name__.lower()]


def grouped_convs(model: nn.Module, graph: ch.ChannelGraph) -> list[str]:
    """Grouped (not depthwise) convs whose channels lie in a prunable group, as ``name (groups=G)``."""
    touched = {s.name for g in graph.groups for s in (*g.producers, *g.consumers)}
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, _ConvNd) or m.groups == 1 or name not in touched:
            continue
        if m.groups == m.in_channels == m.out_channels:
            continue  # depthwise: torch-pruning couples its input and output channels
        found.append(f"{name} (groups={m.groups})")
    return found


def convs_without_bn(model: nn.Module, graph: ch.ChannelGraph, inputs: torch.Tensor) -> list[str]:
    """Convs that produce no prunable group and feed no BatchNorm directly (nothing to regularize)."""
    import torch_pruning as tp

    producers = {s.name for g in graph.groups for s in g.producers}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, _ConvNd) and n not in producers}
    if not convs:
        return []
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
    finally:
        for module, mode in modes.items():
            module.training = mode
    found = []
    for name, conv in convs.items():
        node = dg.module2node.get(conv)
        following = [out.module for out in node.outputs] if node is not None else []
        if not any(isinstance(m, _BatchNorm) for m in following):
            found.append(name)
    return found


def analyze(model: nn.Module, graph: ch.ChannelGraph, inputs: torch.Tensor, report: PreflightReport) -> None:
    """Fill the static part of ``report`` (stages, uncovered BNs, grouped convs, convs without BN)."""
    bns = affine_bns(model)
    covered = set(graph.bn_names())
    report.bn_layers = len(bns)
    report.convs = sum(isinstance(m, _ConvNd) for m in model.modules())
    report.groups, report.filters = len(graph.groups), graph.num_units
    report.stages = summarize_stages(model, graph)
    report.unprunable_bns = [n for n in bns if n not in covered]
    report.skipped = list(graph.skipped)
    report.pad_shortcuts = pad_shortcuts(model)
    report.grouped_convs = grouped_convs(model, graph)
    report.convs_without_bn = convs_without_bn(model, graph, inputs) if bns else []


def static_issues(report: PreflightReport) -> list[Issue]:
    """The findings of the static analysis as sentences (most severe first)."""
    arch = report.arch
    if not report.has_batchnorm:
        return [Issue(REFUSE, f"{arch} has no BatchNorm layer, so sparsity training has nothing to act on; "
                              "pick a backbone with BatchNorm.")]
    issues = []
    if not report.groups:
        reason = f" ({report.skipped[0]})" if report.skipped else ""
        issues.append(Issue(REFUSE, f"{arch} has no prunable BatchNorm channel group{reason}: torch-pruning's "
                                    f"dependency graph maps none of its {report.bn_layers} BN layers "
                                    "(e.g. " + name_list(report.unprunable_bns, 2) + ") to removable filters; "
                                    "pick a backbone with conv-BN blocks."))
    if report.unprunable_bns and report.pad_shortcuts:
        issues.append(Issue(WARN, f"{arch}: torch-pruning cannot follow the zero-padding shortcuts "
                                  f"{name_list(report.pad_shortcuts)}, so the {len(report.unprunable_bns)} BN layers "
                                  f"of the residual streams ({name_list(report.unprunable_bns)}) are neither "
                                  "sparsified nor pruned, only block-internal channels are; use shortcut option B "
                                  "(model_kwargs: {shortcut: B}) to include them."))
    elif report.unprunable_bns and report.groups:
        why = f" ({report.skipped[0]})" if report.skipped else ""
        issues.append(Issue(WARN, f"{arch}: torch-pruning's dependency graph cannot map the BN layers "
                                  f"{name_list(report.unprunable_bns)}{why}, so they are neither sparsified nor "
                                  "pruned; only the other layers are."))
    if report.grouped_convs:
        issues.append(Issue(WARN, f"{arch}: the grouped conv {name_list(report.grouped_convs)} lies in a prunable "
                                  "group, and removing single channels can break its groups (the dry run's compact "
                                  "stage tells); sparsity training and aod still work."))
    if report.convs_without_bn:
        share = len(report.convs_without_bn) / max(report.convs, 1)
        issues.append(Issue(WARN if share >= CONV_WITHOUT_BN_WARN else INFO,
                            f"{arch}: {len(report.convs_without_bn)} of {report.convs} conv layers "
                            f"({name_list(report.convs_without_bn)}) have no BatchNorm after them, so their "
                            "filters are neither regularized nor pruned."))
    return issues


# ----------------------------------------------------------------------------- dry run
def randomize_bns_(model: nn.Module, inputs: torch.Tensor, generator: torch.Generator) -> None:
    """Random gammas in [0.05, 1) and betas in [-0.5, 0.5); running statistics from one batch.

    Distinct |gamma| make the selection meaningful; nonzero betas make the removed filters'
    constants matter (what compaction folds); calibrated statistics keep the outputs of
    order 1 in deep nets, so the tolerance means something.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
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
    from toolbox.sparsity import select

    state.selection = select(state.model, state.graph, state.ratio)
    state.masks = ch.selection_to_masks(state.model, state.graph, state.selection)
    chosen = sum(int(s.sum()) for s in state.selection)
    if state.ratio > 0 and chosen == 0:
        raise RuntimeError(f"no filter was selected at ratio {state.ratio}")
    return f"{chosen} of {state.graph.num_units} filters (ratio {state.ratio:g})"


def stage_reinitialize(state: DryRun) -> str:
    """Re-initialize the selected filters as ``aod`` does and check the model still runs."""
    from toolbox_plugins.aod import AODSettings, reinitialize

    cfg = AODSettings()
    count = reinitialize(state.model, state.graph, state.selection, cfg.reinit, cfg.reinit_gamma,
                         cfg.reinit_next, state.generator)
    if not bool(torch.isfinite(_forward(state.model, state.inputs)).all()):
        raise RuntimeError("the output is not finite after re-initialization")
    return f"{count} filters ({cfg.reinit}, gamma {cfg.reinit_gamma:g})"


def stage_compact(state: DryRun) -> str:
    """Zero the selected scales, remove those filters (exact) and compare with the masked model."""
    from toolbox.compact import compact
    from toolbox.sparsity import zero_chosen_

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


def dry_run_issue(report: PreflightReport) -> Issue | None:
    """The sentence for the first failed dry-run stage (naming the layer and the fix), or None."""
    failed = next((r for r in report.dry_run if r.ok is False), None)
    if failed is None:
        return None
    compaction = failed.name in COMPACTION_STAGES
    severity = REFUSE if not compaction or "prune" in report.plugins else WARN
    if failed.name == "compact" and report.grouped_convs:
        fix = (f"the grouped conv {name_list(report.grouped_convs)} cannot lose single channels; leave prune out "
               "(sst and aod still work) or pick a backbone without grouped convs")
    elif compaction:
        fix = "leave prune out (sst and aod still work) or pick another backbone"
    else:
        fix = "pick another backbone or report the layer to the toolbox"
    return Issue(severity, f"The dry run of {report.arch} failed at {failed.name} ({failed.detail.rstrip('.')}); "
                           f"{fix}.")


# ----------------------------------------------------------------------------- preflight
def resolve_input_size(model: nn.Module, in_chans: int, image_size: int | None) -> tuple[int, int, int]:
    """``(in_chans, H, W)``: ``image_size`` when given, else the model's timm cfg ``input_size``."""
    if image_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size")
        if not size:
            raise UsageError(f"{type(model).__name__} has no default_cfg['input_size']; pass image_size "
                             "(toolbox check: --dataset).")
        return int(in_chans), int(size[-2]), int(size[-1])
    return int(in_chans), int(image_size), int(image_size)


def decide(report: PreflightReport) -> tuple[str, str]:
    """``(verdict, sentence)`` from the issues; without a sparsity/pruning plugin nothing refuses."""
    if all(issue.severity == INFO for issue in report.issues):
        return OK, f"{report.arch} can be sparsified, re-initialized and pruned ({report.filters} filters in " \
                   f"{report.groups} groups)."
    worst = max(report.issues, key=lambda i: SEVERITY[i.severity])
    if worst.severity == REFUSE and not report.relevant:
        return WARN, f"With a sparsity or pruning plugin this would be refused: {worst.sentence}"
    return worst.severity, worst.sentence


def preflight(arch: str, num_classes: int = 10, in_chans: int = 3, image_size: int | None = None,
              model_kwargs: dict[str, Any] | None = None, plugins: Sequence[str] = (), ratio: float = 0.5,
              dry_run: bool = True, seed: int = 0) -> PreflightReport:
    """Check whether ``arch`` can go through sparsity training, re-initialization and pruning.

    Builds the model through timm (an unknown arch or bad ``model_kwargs`` raise
    :class:`UsageError`), traces its BN channel groups, analyzes what cannot be pruned and, with
    ``dry_run``, runs select -> re-initialize -> compact -> save -> reload on a dummy batch of
    ``(in_chans, image_size, image_size)`` images (``image_size`` defaults to the model's cfg).
    ``plugins`` decide whether a problem refuses (see the module docstring). The global random
    state and the ``toolbox`` logger's level are left as they were.
    """

    start = time.perf_counter()
    kwargs = dict(model_kwargs or {})
    names = list(plugins)
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"--ratio must lie in [0, 1), got {ratio}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, num_classes, in_chans, kwargs).eval()
        size = resolve_input_size(model, in_chans, image_size)
        report = PreflightReport(arch=arch, model_kwargs=kwargs, input_size=size, num_classes=num_classes,
                                 plugins=names, ratio=ratio, relevant=needs_check(names))
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn((BATCH, *size), generator=generator)
        graph = trace(model, inputs, report)
        if graph is not None:
            analyze(model, graph, inputs[:1], report)
            report.issues = static_issues(report)
        if dry_run and graph is not None and report.groups:
            with tempfile.TemporaryDirectory(prefix="toolbox-preflight-") as folder:
                state = DryRun(arch, num_classes, in_chans, kwargs, ratio or FALLBACK_RATIO, model, inputs,
                               graph, generator, Path(folder))
                report.dry_run = run_stages(state, DRY_RUN_STAGES)
            issue = dry_run_issue(report)
            if issue is not None:
                report.issues.append(issue)
    report.verdict, report.reason = decide(report)
    report.seconds = time.perf_counter() - start
    return report


def trace(model: nn.Module, inputs: torch.Tensor, report: PreflightReport) -> ch.ChannelGraph | None:
    """The model's channel graph, or None with a refusing issue when tracing fails."""
    try:
        return ch.channel_groups(model, example_inputs=inputs[:1])
    except Exception as exc:  # e.g. a forward that fails at this input size
        report.bn_layers = len(affine_bns(model))
        report.issues.append(Issue(REFUSE, f"Tracing {report.arch} with torch-pruning on "
                                           f"{report.input_size} images failed ({error_sentence(exc)}); check the "
                                           "image size (--dataset) or pick another backbone."))
        return None


def check_run(arch: str, model_kwargs: dict[str, Any] | None, num_classes: int, in_chans: int,
              image_size: int | None, plugins: Sequence[str], ratio: float = 0.5,
              dry_run: bool = True) -> PreflightReport | None:
    """The check at the start of ``toolbox run``: raise :class:`UsageError` (one sentence) on
    ``refuse``, log every warning, and return the report (None when no sparsity or pruning plugin
    is enabled, in which case nothing is checked)."""
    if not needs_check(plugins):
        return None
    report = preflight(arch, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                       model_kwargs=model_kwargs, plugins=plugins, ratio=ratio, dry_run=dry_run)
    if report.verdict == REFUSE:
        raise UsageError(f"Preflight: {report.reason} (`toolbox check --arch {arch}` shows the full report.)")
    for issue in report.issues:
        log.log(logging.INFO if issue.severity == INFO else logging.WARNING, "preflight: %s", issue.sentence)
    log.info("preflight: %s in %.1f s.", report.reason if report.verdict == OK else f"{arch} checked",
             report.seconds)
    return report


# ----------------------------------------------------------------------------- toolbox check
def dataset_shape(dataset: str | None, data_root: str | None = None) -> tuple[int, int | None, int]:
    """``(in_chans, image_size, num_classes)`` of a dataset; ``None`` gives ``(3, None, 10)``
    (image size from the model's cfg). Built-ins come from :data:`DATASET_SHAPES`; ``auto`` is
    Fashion-MNIST where present, else synthetic; other names are loaded once."""
    if dataset is None:
        return 3, None, 10
    if dataset in DATASET_SHAPES:
        return DATASET_SHAPES[dataset][0], DATASET_SHAPES[dataset][1], DATASET_SHAPES[dataset][2]
    from toolbox.data import DatasetNotFoundError, load_dataset, resolve_data_root

    if dataset == "auto":  # as `toolbox run`: Fashion-MNIST where its files are, else synthetic
        from toolbox.data.fashion_mnist import find_files

        return dataset_shape("fashion_mnist" if find_files(resolve_data_root(data_root)) else "synthetic")
    try:
        data = load_dataset(dataset, data_root)
    except (DatasetNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return data.in_chans, data.image_size, data.num_classes


def parse_model_kwargs(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """Model options from a mapping or a YAML mapping string such as ``'{shortcut: A}'``."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return dict(raw)
    import yaml

    try:
        value = yaml.safe_load(str(raw))
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise UsageError(f"--model-kwargs must be a YAML mapping such as '{{shortcut: A}}', got {raw!r}.")
    return value


def check_arguments(values: dict[str, Any]) -> dict[str, Any]:
    """:func:`check_command`'s keyword arguments from merged config-file and flag values.

    Accepts what ``toolbox run`` takes: ``plugins`` as a list or comma-separated string,
    ``model_kwargs`` as a mapping or YAML string, ``ratio`` at the top level or under ``plugin``.
    Without ``arch`` it is a :class:`UsageError`.
    """
    arch = values.get("arch")
    if not arch:
        raise UsageError("toolbox check needs a backbone; pass --arch NAME (e.g. cifar_resnet56) or --config FILE.")
    plugins = values.get("plugins")
    if isinstance(plugins, str):
        plugins = [p.strip() for p in plugins.split(",") if p.strip()]
    nested = values.get("plugin") if isinstance(values.get("plugin"), dict) else {}
    raw_ratio = values.get("ratio", nested.get("ratio"))
    try:
        ratio = 0.5 if raw_ratio is None else float(raw_ratio)
    except (TypeError, ValueError):
        raise UsageError(f"--ratio must be a number in [0, 1), got {raw_ratio!r}.") from None
    return {"arch": str(arch), "plugins": None if plugins is None else list(plugins),
            "dataset": values.get("dataset"), "data_root": values.get("data_root"),
            "model_kwargs": parse_model_kwargs(values.get("model_kwargs")), "ratio": ratio}


def check_command(arch: str, plugins: Sequence[str] | None = None, dataset: str | None = None,
                  data_root: str | None = None, model_kwargs: dict[str, Any] | None = None,
                  ratio: float = 0.5, console: Any = None) -> PreflightReport:
    """``toolbox check``: the full preflight of ``arch`` on ``dataset``'s image shape, printed.

    ``plugins`` default to :data:`DEFAULT_CHECK_PLUGINS` (the paper's pipeline plus prune).
    Prints :func:`render` to ``console`` (a rich Console; default stdout) and returns the report;
    :func:`exit_code` gives the command's exit status.
    """
    from rich.console import Console

    in_chans, image_size, num_classes = dataset_shape(dataset, data_root)
    names = list(DEFAULT_CHECK_PLUGINS if plugins is None else plugins)
    report = preflight(arch, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                       model_kwargs=model_kwargs, plugins=names, ratio=ratio, dry_run=True)
    (console or Console(soft_wrap=True)).print(render(report))
    return report


def exit_code(report: PreflightReport) -> int:
    """0 for ``ok`` and ``warn``, 1 for ``refuse``."""
    return 1 if report.verdict == REFUSE else 0


# ----------------------------------------------------------------------------- rendering
VERDICT_STYLE = {OK: "bold green", INFO: "cyan", WARN: "bold yellow", REFUSE: "bold red"}


def render(report: PreflightReport) -> Any:
    """The report as rich renderables (a ``rich.console.Group``): summary, stages, issues, dry run."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [summary_table(report)]
    if report.stages:
        parts.append(stages_table(report))
    if report.issues:
        parts.append(issues_table(report))
    if report.dry_run:
        parts.append(dry_run_table(report))
    verdict = Text(f"verdict: {report.verdict.upper()}  ", style=VERDICT_STYLE[report.verdict])
    verdict.append(report.reason, style="default")
    parts.append(verdict)
    return Group(*parts)


def summary_table(report: PreflightReport) -> Any:
    """Model, input, plugins, BN layers, groups and filters."""
    from rich.table import Table

    table = Table(title=f"preflight: {report.arch}", show_header=False)
    table.add_column("key")
    table.add_column("value")
    kwargs = ", ".join(f"{k}={v}" for k, v in report.model_kwargs.items()) or "-"
    c, h, w = report.input_size
    rows = [("model_kwargs", kwargs), ("input", f"{c}x{h}x{w}, {report.num_classes} classes"),
            ("plugins", ", ".join(report.plugins) or "-"),
            ("sparsity/pruning plugin", "yes" if report.relevant else "no"),
            ("BatchNorm layers", str(report.bn_layers)),
            ("prunable groups / filters", f"{report.groups} / {report.filters}"),
            ("unprunable BN layers", name_list(report.unprunable_bns) or "-"),
            ("seconds", f"{report.seconds:.2f}")]
    for key, value in rows:
        table.add_row(key, value)
    return table


def stages_table(report: PreflightReport) -> Any:
    """Per stage: BN layers (prunable/all), channels (prunable/all), groups and filters."""
    from rich.table import Table

    table = Table(title="prunable channels per stage")
    for column in ("stage", "BN layers", "BN channels", "groups", "filters"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in report.stages:
        table.add_row(row.stage, f"{row.prunable_bn_layers}/{row.bn_layers}",
                      f"{row.prunable_channels}/{row.channels}", str(row.groups), str(row.filters))
    return table


def issues_table(report: PreflightReport) -> Any:
    """Every finding with its severity (a refusal shows as warn without a sparsity/pruning plugin)."""
    from rich.table import Table

    table = Table(title="findings")
    table.add_column("severity")
    table.add_column("finding")
    for issue in report.issues:
        severity = issue.severity if report.relevant or issue.severity != REFUSE else WARN
        table.add_row(f"[{VERDICT_STYLE[severity]}]{severity}[/]", issue.sentence)
    return table


def dry_run_table(report: PreflightReport) -> Any:
    """The dry run's stages: passed / FAILED / skipped, seconds and detail."""
    from rich.table import Table

    table = Table(title=f"dry run on a dummy batch (ratio {report.ratio or FALLBACK_RATIO:g})")
    for column in ("stage", "result", "seconds", "detail"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    labels = {True: "[green]passed[/]", False: "[red]FAILED[/]", None: "[dim]skipped[/]"}
    for row in report.dry_run:
        table.add_row(row.name, labels[row.ok], f"{row.seconds:.2f}", row.detail)
    return table
