"""The ``toolbox`` commands that look at what exists: eval, prune, check, report, plugins, models.

They register on the shared app of :mod:`toolbox.cli.app`; :mod:`toolbox.cli` imports this module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from toolbox.cli.app import app, merged_values, models_app, plugins_app, user_errors
from toolbox.cli.console import console
from toolbox.errors import UsageError

log = logging.getLogger("toolbox")


@app.command("eval")
@user_errors
def eval_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by toolbox."),
    dataset: Optional[str] = typer.Option(None, help="Dataset (default: the one it was trained on)."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    batch_size: int = typer.Option(512, help="Evaluation batch size."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
) -> None:
    """Evaluate a checkpoint on the full test set (top-1 / top-5), normalized as its run trained."""
    from toolbox.data import BatchLoader, load_dataset
    from toolbox.run.engine import evaluate
    from toolbox.runtime.device import select_device
    from toolbox.storage.checkpoint import load_checkpoint, model_from_checkpoint, recorded_normalization

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}.")
    data_checkpoint = load_checkpoint(checkpoint)
    options = data_checkpoint.get("options") or {}
    name = dataset or options.get("dataset")
    if not name:
        raise UsageError(f"{checkpoint} does not record its dataset; pass --dataset.")
    normalization = recorded_normalization(data_checkpoint, checkpoint)
    try:
        from toolbox.data.datasets import with_normalization
        from toolbox.options import CORE_FIELDS, RunOptions
        from toolbox.run.inputs import load_run_data

        recorded = RunOptions(**{k: v for k, v in options.items() if k in CORE_FIELDS and k != "plugin"})
        if name in ("imagefolder", "synthetic") or name == recorded.dataset:
            # the training data as recorded: folders, sizes, channels (a serve file records only its input size)
            recorded.dataset, recorded.data_root = name, data_root or recorded.data_root
            size = data_checkpoint.get("input_size")
            if name == "imagefolder" and size and "image_size" not in options:
                recorded.channels, recorded.image_size = size[0], size[-1]
            data = load_run_data(recorded)
        else:  # another dataset
            data = load_dataset(name, data_root or options.get("data_root"))
        if normalization is not None:  # as the model was trained, never recomputed from the folder now
            data = with_normalization(data, *normalization)
        else:
            log.warning("%s records no normalization; using the statistics of %s as found now.", checkpoint, name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if data.num_classes != data_checkpoint["num_classes"] or data.in_chans != data_checkpoint["in_chans"]:
        raise UsageError(
            f"{checkpoint} is for {data_checkpoint['num_classes']} classes / {data_checkpoint['in_chans']} "
            f"channels but {name} has {data.num_classes} / {data.in_chans}; pass the dataset it was trained on."
        )
    dev = select_device(device)
    model = model_from_checkpoint(data_checkpoint).to(dev)
    loader = BatchLoader(data.test_x, data.test_y, None, batch_size, data.mean, data.std, train=False, device=dev)
    result = evaluate(model, loader, dev)
    console.print(f"{checkpoint}: {data_checkpoint['arch']} step {data_checkpoint['step']} "
                  f"{data_checkpoint['phase']} on {name} test set: top-1 {result['top1']:.2f}% "
                  f"top-5 {result['top5']:.2f}% loss {result['loss']:.4f}", markup=False, highlight=False)


@app.command()
@user_errors
def prune(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by toolbox (with sst masks, or use --ratio)."),
    out: Path = typer.Option(..., help="Where to write the compact checkpoint."),
    ratio: Optional[float] = typer.Option(None, help="Remove this fraction of filters by BN |gamma| instead of the checkpoint's masks (needed when it has none)."),
    round_to: int = typer.Option(1, help="Keep layer widths multiples of this (faster kernels, fewer MACs removed)."),
) -> None:
    """Remove the unimportant channels with torch-pruning: a smaller, faster model."""
    from toolbox.pruning.prune_file import prune_checkpoint
    from toolbox.sparsity.channels import require_ratio

    if ratio is not None:
        require_ratio(ratio)
    if round_to < 1:
        raise UsageError(f"--round-to must be at least 1, got {round_to}.")
    report = prune_checkpoint(checkpoint, out, ratio=ratio, round_to=round_to)
    table = Table(title=f"compacted {checkpoint} -> {out}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command("check")
@user_errors
def check(
    arch: Optional[str] = typer.Option(None, help="Backbone name in timm's registry, e.g. cifar_resnet56."),
    plugins: Optional[str] = typer.Option(None, help="Comma-separated plugins the run would use (default sst,aod,msl,prune)."),
    dataset: Optional[str] = typer.Option(None, help="Dataset giving image shape and classes: cifar100, tiny_imagenet, fashion_mnist, synthetic or auto (default: the model's cfg, 10 classes)."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder (read only for auto and registered datasets)."),
    model_kwargs: Optional[str] = typer.Option(None, help="Model options as a YAML mapping, e.g. '{shortcut: A}'."),
    ratio: Optional[float] = typer.Option(None, help="Fraction of filters the dry run selects, re-initializes and removes (default 0.5)."),
    config: Optional[Path] = typer.Option(None, help="A run's YAML/TOML config: check the run it describes."),
) -> None:
    """Check before a long run that a backbone can be sparsified, re-initialized and pruned (exit 1 if not)."""
    from toolbox.cli.check import check_arguments, check_command, exit_code

    flags = dict(arch=arch, plugins=plugins, dataset=dataset, data_root=data_root, model_kwargs=model_kwargs,
                 ratio=ratio)
    report = check_command(**check_arguments(merged_values(config, flags, [])), console=console)
    raise typer.Exit(exit_code(report))


@app.command("report")
@user_errors
def report_command(
    dirs: list[Path] = typer.Argument(..., help="Run directories, or folders holding them."),
    out: Optional[Path] = typer.Option(None, help="Where to write report.md/.csv/.json and the plot (default: the first DIR)."),
) -> None:
    """Compare runs: per step top-1 mean ± std over seeds, params, MACs, sparsity, train seconds."""
    from toolbox.cli.console import setup_logging
    from toolbox.run.results import rows_markdown, write_comparison

    setup_logging()
    target = out or dirs[0]
    rows = write_comparison(dirs, target)
    console.print(rows_markdown(rows), markup=False, highlight=False)
    console.print(f"written: {target}/report.md, report.csv, report.json, top1_vs_step.png", markup=False, highlight=False)


@plugins_app.command("list")
@user_errors
def plugins_list() -> None:
    """Installed plugins: name, source (built-in or package version), hooks implemented."""
    from toolbox.plugin_host.entry_points import available_plugins, instantiate, load_entry_point
    from toolbox.plugin_host.manager import hooks_of

    table = Table(title="toolbox plugins")
    for column in ("name", "source", "hooks"):
        table.add_column(column)
    for name, info in available_plugins().items():
        try:
            hooks = ", ".join(h.removeprefix("toolbox_") for h in hooks_of(instantiate(load_entry_point(name))))
        except Exception as exc:  # a broken third-party plugin must not hide the others
            hooks = f"(failed to load: {exc})"
        table.add_row(name, info.source, hooks)
    console.print(table)


@plugins_app.command("show")
@user_errors
def plugins_show(name: str = typer.Argument(..., help="An installed plugin, e.g. sst.")) -> None:
    """One plugin: its source, docstring, hooks and options (type, default, choices)."""
    from toolbox.cli.help import show_plugin

    show_plugin(name, console)


@models_app.command("list")
@user_errors
def models_list(pattern: str = typer.Argument("cifar_*", help="timm name pattern, e.g. 'resnet*'.")) -> None:
    """Backbones in timm's registry matching the pattern (toolbox's CIFAR models by default)."""
    import timm

    import toolbox  # noqa: F401  (registers the CIFAR backbones)

    names = timm.list_models(pattern)
    if pattern == "cifar_*":
        names += timm.list_models("tinyimagenet_*")
    for name in names:
        console.print(name, markup=False, highlight=False)
