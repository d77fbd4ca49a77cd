"""The ``toolbox`` commands that look at what exists: eval, prune, check, report, plugins, models.

They register on the shared app of :mod:`toolbox.cli.app`; :mod:`toolbox.cli` imports this module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from toolbox.cli.app import app, merged_values, models_app, plugins_app, user_errors
from toolbox.cli.console import console
from toolbox.errors import UsageError

log = logging.getLogger("toolbox")


@app.command("eval")
@user_errors
def eval_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A phase checkpoint or serve file written by toolbox."),
    dataset: Optional[str] = typer.Option(None, help="Dataset (default: the one it was trained on)."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    test: Optional[Path] = typer.Option(None, help="Folder of test images in ImageFolder layout (default: the run's test folder; for a moved one)."),
    batch_size: int = typer.Option(512, help="Evaluation batch size."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    models_from: Optional[list[str]] = typer.Option(None, help="Python file or module registering the backbone (default: what the run's config.yaml records); repeatable."),
) -> None:
    """Evaluate a checkpoint on the full test set (top-1, and top-5 for more than five classes), normalized as its run trained."""
    from toolbox.data import BatchLoader
    from toolbox.models.sources import import_sources
    from toolbox.plugin_host.entry_points import import_model_packages
    from toolbox.run.engine import evaluate
    from toolbox.runtime.device import select_device
    from toolbox.storage.checkpoint import load_checkpoint, model_from_checkpoint

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}.")
    if test is not None and dataset not in (None, "imagefolder"):
        raise UsageError(f"--test evaluates on a folder of images; drop --dataset {dataset} or --test.")
    data_checkpoint = load_checkpoint(checkpoint)
    options = data_checkpoint.get("options") or run_options(checkpoint)
    data, name = eval_data(checkpoint, data_checkpoint, options, dataset, data_root, test)
    if data.num_classes != data_checkpoint["num_classes"] or data.in_chans != data_checkpoint["in_chans"]:
        raise UsageError(
            f"{checkpoint} is for {data_checkpoint['num_classes']} classes / {data_checkpoint['in_chans']} "
            f"channels but {name} has {data.num_classes} / {data.in_chans}; pass the dataset it was trained on."
        )
    dev = select_device(device)
    import_model_packages()
    import_sources(models_from or recorded_sources(checkpoint))
    model = model_from_checkpoint(data_checkpoint).to(dev)
    loader = BatchLoader(data.test_x, data.test_y, None, batch_size, data.mean, data.std, train=False, device=dev)
    result = evaluate(model, loader, dev)
    console.print(f"{checkpoint}: {data_checkpoint['arch']} step {data_checkpoint['step']} "
                  f"{data_checkpoint['phase']} on {name} test set: top-1 {result['top1']:.2f}% "
                  + (f"top-5 {result['top5']:.2f}% " if result["top5"] is not None else "")
                  + f"loss {result['loss']:.4f}", markup=False, highlight=False)


def recorded_sources(checkpoint: Path) -> list[str]:
    """The ``models_from`` that the config.yaml of the run holding ``checkpoint`` (in its
    checkpoints/ or serve/ folder) records; never read from the checkpoint itself, which may come
    from elsewhere (importing runs code)."""
    from toolbox.options import read_mapping

    config = checkpoint.parent.parent / "config.yaml"
    if checkpoint.parent.name not in ("serve", "checkpoints") or not config.is_file():
        return []
    return [str(source) for source in read_mapping(config).get("models_from") or []]


def run_options(checkpoint: Path) -> dict[str, Any]:
    """The options of the run a serve file (``RUN/serve/stepK.pt``, which records none) belongs to,
    from ``RUN/config.yaml``; ``{}`` for a file outside a run directory."""
    from toolbox.options import read_mapping

    config = checkpoint.parent.parent / "config.yaml"
    if checkpoint.parent.name != "serve" or not config.is_file():
        return {}
    return read_mapping(config)


def eval_data(checkpoint: Path, data_checkpoint: dict[str, Any], options: dict[str, Any], dataset: str | None,
              data_root: str | None, test: Path | None) -> tuple[Any, str]:
    """``(data, name)`` to evaluate ``checkpoint`` on: ``test`` or a ``--shards`` run's test folder,
    else the recorded (or given) dataset, normalized as the model was trained."""
    from toolbox.data import load_dataset
    from toolbox.data.datasets import with_normalization
    from toolbox.options import CORE_FIELDS, RunOptions
    from toolbox.run.inputs import load_run_data
    from toolbox.storage.checkpoint import recorded_normalization

    name = dataset or options.get("dataset")
    if test is not None and not test.expanduser().is_dir():
        raise UsageError(f"--test {test} is not a folder; pass the folder of test images (one folder per class).")
    test = test or (Path(options["test"]) if options.get("shards") and options.get("test") else None)
    if test is None and not name:
        raise UsageError(f"{checkpoint} does not record its dataset; pass --dataset NAME, or --test DIR for a "
                         "folder of test images.")
    normalization = recorded_normalization(data_checkpoint, checkpoint)
    try:
        if test is not None:
            return test_folder_data(checkpoint, data_checkpoint, options, test, normalization), str(test)
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
    return data, name


def test_folder_data(checkpoint: Path, data_checkpoint: dict[str, Any], options: dict[str, Any], folder: Path,
                     normalization: tuple[list[float], list[float]] | None) -> Any:
    """The images of the test folder ``folder`` with the checkpoint's classes, input size, channels
    and normalization (no training images)."""
    import torch

    from toolbox.data.datasets import ImageData
    from toolbox.data.imagefolder import NAME, class_folders, load_image_folders

    folder = folder.expanduser()
    if not folder.is_dir():
        raise UsageError(f"The test folder {folder} of {checkpoint} is not there (moved?); pass --test DIR.")
    classes = data_checkpoint.get("classes") or options.get("classes") or class_folders(folder, "test image")
    size = data_checkpoint.get("input_size") or [data_checkpoint["in_chans"], options.get("image_size") or 32]
    images = load_image_folders([folder], classes, int(size[-1]), int(data_checkpoint["in_chans"]),
                                bool(options.get("skip_bad_images")), require_all_classes=False, what="test image")
    if normalization is None:
        log.warning("%s records no normalization; using the statistics of %s as found now.", checkpoint, folder)
        normalization = (list(images.mean), list(images.std))
    empty = torch.zeros((0, *images.x.shape[1:]), dtype=torch.uint8)
    return ImageData(name=NAME, train_x=empty, train_y=torch.zeros(0, dtype=torch.int64), test_x=images.x,
                     test_y=images.y, num_classes=len(classes), mean=tuple(normalization[0]),
                     std=tuple(normalization[1]), source=str(folder), classes=list(classes))


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


@app.command()
@user_errors
def promote(
    run_dir: Path = typer.Argument(..., help="A run directory (its --out)."),
    step: int = typer.Option(..., help="The step whose served model becomes serve/current.pt (an earlier one rolls back)."),
) -> None:
    """Serve a step's model by hand: serve/current.pt becomes its copy, and history.json says so."""
    from toolbox.run.promotion import promote_by_hand

    history = promote_by_hand(run_dir, step)
    current = history["current"]
    console.print(f"serve/current.pt is now step {current['step']}'s model ({current['reason']}); "
                  f"recorded in {run_dir / 'serve' / 'history.json'}.")


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
    if len(dirs) == 1 and out is None and (dirs[0] / "compare.yaml").is_file():  # a `toolbox compare` folder
        from toolbox.compare.compare import report

        report(dirs[0])
        console.print((dirs[0] / "compare.md").read_text(), markup=False, highlight=False)
        return
    target = out or dirs[0]
    rows = write_comparison(dirs, target)
    console.print(rows_markdown(rows), markup=False, highlight=False)
    console.print(f"written: {target}/report.md, report.csv, report.json, top1_vs_step.png", markup=False, highlight=False)


@plugins_app.command("list")
@user_errors
def plugins_list() -> None:
    """Installed plugins: name, source (built-in or package version) and what each does."""
    from toolbox.cli.plugin_docs import plugins_table

    console.print(plugins_table(), soft_wrap=False)


@plugins_app.command("show")
@user_errors
def plugins_show(name: str = typer.Argument(..., help="An installed plugin, e.g. sst.")) -> None:
    """One plugin: its source, docstring, hooks and options (type, default, choices)."""
    from toolbox.cli.plugin_docs import show_plugin

    show_plugin(name, console)


@models_app.command("list")
@user_errors
def models_list(pattern: str = typer.Argument("cifar_*", help="timm name pattern, e.g. 'resnet*'.")) -> None:
    """Backbones in timm's registry matching the pattern (toolbox's CIFAR models by default)."""
    import timm

    import toolbox  # noqa: F401  (registers the CIFAR backbones)
    from toolbox.plugin_host.entry_points import import_model_packages

    import_model_packages()  # and those of installed packages

    names = timm.list_models(pattern)
    if pattern == "cifar_*":
        names += timm.list_models("tinyimagenet_*")
    for name in names:
        console.print(name, markup=False, highlight=False)
