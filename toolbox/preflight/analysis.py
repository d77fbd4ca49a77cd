"""Preflight ("fail fast"): can this backbone be sparsified, re-initialized and pruned?

Before an hour-long run, :func:`preflight` builds the model through timm, traces it with
torch-pruning's dependency graph (:mod:`toolbox.sparsity.channels`) and reports

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
(:func:`toolbox.methods.reinit.reinitialize`, as ``aod`` does), zero their scales and remove them
(:func:`toolbox.pruning.compaction.compact`, ``exact=True``), check that the compact model computes what the
masked one does, save a checkpoint with the structure record, reload it
(:func:`~toolbox.storage.checkpoint.model_from_checkpoint`) and check the outputs again. Each stage is a
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

import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from toolbox.errors import UsageError
from toolbox.models import build_model
from toolbox.models.modules import batchnorms, dummy_input
from toolbox.plugin_host import capabilities as cap
from toolbox.plugin_host.entry_points import import_model_packages
from toolbox.preflight.dry_run import (
    BATCH,
    COMPACTION_STAGES,
    DRY_RUN_STAGES,
    DryRun,
    StageResult,
    error_sentence,
    run_stages,
)
from toolbox.sparsity import channels as ch

log = logging.getLogger("toolbox")

OK, WARN, REFUSE = "ok", "warn", "refuse"
#: Severity of a finding that is only reported (it never changes the verdict).
INFO = "info"
#: Severity order of verdicts and issues.
SEVERITY = {INFO: 0, OK: 0, WARN: 1, REFUSE: 2}
#: Convs without a BatchNorm after them warn from this share of all convs on (below: info,
#: e.g. the squeeze-excitation convs of EfficientNets).
CONV_WITHOUT_BN_WARN = 0.25
#: Containers whose numbered children are stages (``blocks.3``), not blocks of one stage.
STAGE_CONTAINERS = ("blocks", "stages", "features", "layers")
#: Dry-run ratio when the configured one is 0 (nothing would be selected).
FALLBACK_RATIO = 0.5
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
    """Whether ``plugins`` include one that sparsifies, re-initializes or removes filters
    (a structural capability, :data:`toolbox.plugin_host.capabilities.STRUCTURAL`)."""
    names = list(plugins)
    return any(cap.providers(names, capability) for capability in cap.STRUCTURAL)


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


# ----------------------------------------------------------------------------- static analysis
def summarize_stages(model: nn.Module, graph: ch.ChannelGraph) -> list[StageSummary]:
    """Per stage: BN layers and channels, how many are prunable, the groups and filters.

    A group spanning several stages (a residual stream starting at the stem) counts in the
    stage most of its BN layers belong to.
    """
    stages: dict[str, StageSummary] = {}
    covered = set(graph.bn_names())
    for name, bn in batchnorms(model, affine=True).items():
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
    bns = batchnorms(model, affine=True)
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


def dry_run_issue(report: PreflightReport) -> Issue | None:
    """The sentence for the first failed dry-run stage (naming the layer and the fix), or None."""
    failed = next((r for r in report.dry_run if r.ok is False), None)
    if failed is None:
        return None
    compaction = failed.name in COMPACTION_STAGES
    compactors = cap.providers(report.plugins, cap.COMPACT)
    severity = REFUSE if not compaction or compactors else WARN
    leave = (f"leave {' and '.join(compactors) or 'the compacting plugin'} out (sparsity training and "
             "re-initialization still work)")
    if failed.name == "compact" and report.grouped_convs:
        fix = (f"the grouped conv {name_list(report.grouped_convs)} cannot lose single channels; {leave} or pick "
               "a backbone without grouped convs")
    elif compaction:
        fix = f"{leave} or pick another backbone"
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
    ch.require_ratio(ratio)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        import_model_packages()
        model = build_model(arch, num_classes, in_chans, kwargs).eval()
        size = resolve_input_size(model, in_chans, image_size)
        report = PreflightReport(arch=arch, model_kwargs=kwargs, input_size=size, num_classes=num_classes,
                                 plugins=names, ratio=ratio, relevant=needs_check(names))
        generator = torch.Generator().manual_seed(seed)
        inputs = dummy_input(size, BATCH, generator=generator)
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
        report.bn_layers = len(batchnorms(model, affine=True))
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
