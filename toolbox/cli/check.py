"""``toolbox check``: the full preflight of a backbone on a dataset's image shape, printed.

:func:`check_arguments` reads merged config-file and flag values, :func:`check_command` resolves
the dataset's shape (:func:`dataset_shape`), runs :func:`toolbox.preflight.analysis.preflight` and prints
:func:`render`'s tables; :func:`exit_code` is the command's exit status.
"""

from __future__ import annotations

from typing import Any, Sequence

from toolbox.errors import UsageError
from toolbox.plugin_host import capabilities as cap
from toolbox.preflight.analysis import FALLBACK_RATIO, INFO, OK, REFUSE, WARN, PreflightReport, name_list, preflight

#: (in_chans, image_size, num_classes) of the built-in datasets, so ``toolbox check`` need not
#: load them; other (registered) datasets are loaded once to read their shape.


def dataset_shape(dataset: str | None, data_root: str | None = None) -> tuple[int, int | None, int]:
    """``(in_chans, image_size, num_classes)`` of a dataset; ``None`` gives ``(3, None, 10)``
    (image size from the model's cfg). Known shapes come from the dataset registry
    (:func:`toolbox.data.known_shape`); ``auto`` is
    Fashion-MNIST where present, else synthetic; other names are loaded once."""
    if dataset is None:
        return 3, None, 10
    from toolbox.data import DatasetNotFoundError, known_shape, load_dataset, resolve_data_root

    shape = known_shape(dataset)
    if shape is not None:
        return shape

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

    ``plugins`` default to :func:`default_check_plugins` (every installed plugin that changes
    the structure: sparsity, re-initialization, compaction).
    Prints :func:`render` to ``console`` (a rich Console; default stdout) and returns the report;
    :func:`exit_code` gives the command's exit status.
    """
    from rich.console import Console

    in_chans, image_size, num_classes = dataset_shape(dataset, data_root)
    names = default_check_plugins() if plugins is None else list(plugins)
    report = preflight(arch, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                       model_kwargs=model_kwargs, plugins=names, ratio=ratio, dry_run=True)
    (console or Console(soft_wrap=True)).print(render(report))
    return report


def exit_code(report: PreflightReport) -> int:
    """0 for ``ok`` and ``warn``, 1 for ``refuse``."""
    return 1 if report.verdict == REFUSE else 0


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


def default_check_plugins() -> list[str]:
    """The installed plugins with a structural capability (sparsify, re-initialize, compact)."""
    from toolbox.plugin_host.entry_points import available_plugins, load_installed

    names = list(available_plugins())
    plugins = load_installed(names)
    return [name for name in names if cap.capabilities_of(plugins.get(name))[0] & cap.STRUCTURAL]

