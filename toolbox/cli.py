"""The ``toolbox`` command line (typer): run, step, train, eval, prune, check, report, plugins, models.

Core flags and plugin flags share one path: every ``--name VALUE`` goes through
:func:`toolbox.options.build_options` together with the config file, so a value is parsed and
validated in one place whatever its source. User errors exit with code 2 and one sentence.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.table import Table

from toolbox.console import Progress, console, error_console, print_results, say, setup_logging
from toolbox.errors import UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train CNNs on accumulated new data, step by step, with plugins.")
plugins_app = typer.Typer(no_args_is_help=True, help="Inspect installed plugins.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect registered backbones.")
app.add_typer(plugins_app, name="plugins")
app.add_typer(models_app, name="models")

EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Report errors as ``Error: <sentence>`` on stderr, no traceback.

    Exit codes: 2 for a :class:`UsageError` (bad value, bad or mismatched checkpoint), 1 for a
    non-finite loss (:class:`toolbox.engine.NumericError`), for a file the run could not write
    (:class:`toolbox.io.WriteError`: full disk, permissions; earlier checkpoints intact)
    and, under torchrun, for a collective that failed because another process died or hung. In
    a multi-process run the other ranks' messages start with ``rank N:``.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from toolbox import distributed, runlock
        from toolbox.io import WriteError
        from toolbox.engine import NumericError

        who = "" if distributed.is_main() else f"rank {distributed.rank()}: "
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            error_console.print(f"Error: {who}{exc}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        except (NumericError, WriteError) as exc:
            error_console.print(f"Error: {who}{exc}", markup=False, highlight=False)
            raise typer.Exit(1) from None
        except RuntimeError as exc:  # torch.distributed.DistError is one
            if not distributed.is_peer_failure(exc):
                raise
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            error_console.print(f"Error: {who}another process of this torchrun job failed or stopped answering "
                                f"({detail}); the checkpoints written so far are intact: continue with "
                                "`toolbox run --resume <run dir>`.", markup=False, highlight=False)
            raise typer.Exit(1) from None
        finally:
            runlock.release_all()
            distributed.destroy()

    return wrapper


def parse_extra_args(tokens: list[str]) -> dict[str, Any]:
    """``--s 1e-3 --ratio=0.5 --flag --no-other`` -> ``{"s": "1e-3", "ratio": "0.5", ...}``."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) < 3:
            raise UsageError(f"Unexpected argument {token!r}; options are written --name VALUE.")
        name, eq, value = token[2:].partition("=")
        if not eq:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if following is None or (following.startswith("--") and len(following) > 2):
                value = "true"
                if name.startswith("no-"):
                    name, value = name[3:], "false"
            else:
                value = following
                i += 1
        values[name.replace("-", "_")] = value
        i += 1
    return values


def merged_values(config: Optional[Path], flags: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """Config file values, overridden by explicit flags, overridden by extra ``--name VALUE``."""
    from toolbox.options import load_config_file

    values: dict[str, Any] = load_config_file(config) if config is not None else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(parse_extra_args(extra))
    return values


@app.command(context_settings=EXTRA)
@user_errors
def run(
    ctx: typer.Context,
    plugins: Optional[str] = typer.Option(None, help="Comma-separated plugins, e.g. sst,aod,msl."),
    arch: Optional[str] = typer.Option(None, help="Backbone name in timm's registry (default cifar_resnet20)."),
    dataset: Optional[str] = typer.Option(None, help="cifar100, tiny_imagenet, fashion_mnist, synthetic, imagefolder (your own class folders: --data-root DIR with train/ and test/, or --train DIR --test DIR; --image-size, --channels, --mean/--std, --skip-bad-images), or auto (Fashion-MNIST where present, else synthetic)."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder (else $TOOLBOX_DATA, else ~/.cache/toolbox/data)."),
    steps: Optional[str] = typer.Option(None, help="Number of data shards / steps (default 4)."),
    epochs: Optional[str] = typer.Option(None, help="Epochs per phase (default 1)."),
    batch_size: Optional[str] = typer.Option(None, help="Training batch size (default 128)."),
    lr: Optional[str] = typer.Option(None, help="Peak learning rate (default 0.1)."),
    seed: Optional[str] = typer.Option(None, help="Seed of shards, init and batch order (default 0)."),
    seeds: Optional[str] = typer.Option(None, help="Run once per seed (e.g. 0,1,2) in <out>/seed<k>/ and write report.md."),
    out: Optional[str] = typer.Option(None, help="Run directory (default runs/<time>-<dataset>-<arch>)."),
    config: Optional[Path] = typer.Option(None, help="YAML/TOML file with the same keys as the flags."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory."),
) -> None:
    """Run the multi-step pipeline: every step learns a new shard through the plugins' phases.

    Any other core option (--per-class, --schedule, --warmup-epochs, --weight-decay, --momentum,
    --precision, --device, --threads, --reset-optimizer, --channels-last, ...) and every option a
    plugin declares (see `toolbox plugins list`) is accepted as --name VALUE.
    """
    from toolbox import distributed
    from toolbox.experiment import EXPERIMENT_FILE, resume_seeds, run_seeds
    from toolbox.run import resume_run, start_run

    setup_logging()
    distributed.init()
    progress = Progress()

    def announce(runner: Any) -> None:
        processes = f"  processes: {distributed.world_size()}" if distributed.active() else ""
        say(f"run directory: {runner.run_dir}  data: {runner.data.source}  device: {runner.device}{processes}")

    experiment: Optional[Path] = None
    try:
        if resume is not None:
            if ctx.args or any(v is not None for v in (plugins, arch, dataset, steps, epochs, config, seeds)):
                raise UsageError("--resume takes its options from the run's config.yaml; pass only --resume DIR.")
            if distributed.run_on_main((resume / EXPERIMENT_FILE).is_file):
                experiment = resume_seeds(resume, progress, announce)
            else:
                runner = resume_run(resume, progress)
        else:
            flags = dict(plugins=plugins, arch=arch, dataset=dataset, data_root=data_root, steps=steps,
                         epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, seeds=seeds, out=out)
            values = merged_values(config, flags, ctx.args)
            if values.get("seeds"):
                experiment = run_seeds(values, progress, announce)
            else:
                runner = start_run(values, progress)
        if experiment is not None:
            say(f"per-seed runs and report.md in {experiment}")
            say(distributed.run_on_main((experiment / "report.md").read_text))
            return
        announce(runner)
        results = runner.execute()
    finally:
        progress.close()
    print_results(results)
    say(f"results: {runner.run_dir / 'results.md'}")


@app.command()
@user_errors
def step(
    run_dir: Path = typer.Argument(..., help="The run directory (a finished run started with --shards)."),
    data: Path = typer.Option(..., help="The newly arrived folder of class folders (the run's classes)."),
) -> None:
    """Add one step to a finished run with a newly arrived folder of images; earlier folders are
    not needed."""
    from toolbox.step import add_step

    setup_logging()
    progress = Progress()
    try:
        runner = add_step(run_dir, data, progress)
        results = runner.execute()
    finally:
        progress.close()
    print_results(results)
    say(f"results: {runner.run_dir / 'results.md'}  model to serve: {runner.run_dir / 'serve'}")


@app.command(context_settings=EXTRA)
@user_errors
def train(
    ctx: typer.Context,
    phase: str = typer.Option("learn", help="The phase to run: learn, sparsify or compact."),
    init: Optional[Path] = typer.Option(None, help="Start from this checkpoint (arch and masks come from it)."),
    plugins: Optional[str] = typer.Option(None, help="Comma-separated plugins."),
    arch: Optional[str] = typer.Option(None, help="Backbone (ignored with --init)."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    epochs: Optional[str] = typer.Option(None, help="Epochs."),
    batch_size: Optional[str] = typer.Option(None, help="Batch size."),
    lr: Optional[str] = typer.Option(None, help="Peak learning rate."),
    seed: Optional[str] = typer.Option(None, help="Seed."),
    out: Optional[str] = typer.Option(None, help="Run directory."),
    config: Optional[Path] = typer.Option(None, help="YAML/TOML config file."),
) -> None:
    """Train one phase on the whole training set (or --per-class images per class)."""
    from toolbox.run import start_run

    setup_logging()
    flags = dict(plugins=plugins, arch=arch, dataset=dataset, data_root=data_root, epochs=epochs,
                 batch_size=batch_size, lr=lr, seed=seed, out=out, steps="1")
    values = merged_values(config, flags, ctx.args)
    progress = Progress()
    try:
        runner = start_run(values, progress, init=init)
        results = runner.execute(only_phase=phase)
    finally:
        progress.close()
    print_results(results)


@app.command("eval")
@user_errors
def eval_checkpoint(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by toolbox."),
    dataset: Optional[str] = typer.Option(None, help="Dataset (default: the one it was trained on)."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder."),
    batch_size: int = typer.Option(512, help="Evaluation batch size."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
) -> None:
    """Evaluate a checkpoint on the full test set (top-1 / top-5)."""
    from toolbox.checkpoint import load_checkpoint, model_from_checkpoint
    from toolbox.data import BatchLoader, load_dataset
    from toolbox.device import select_device
    from toolbox.engine import evaluate

    data_checkpoint = load_checkpoint(checkpoint)
    options = data_checkpoint.get("options") or {}
    name = dataset or options.get("dataset")
    if not name:
        raise UsageError(f"{checkpoint} does not record its dataset; pass --dataset.")
    try:
        if name == "imagefolder":  # the recorded folders, image size, channels and normalization
            from toolbox.options import CORE_FIELDS, RunOptions
            from toolbox.run_data import load_run_data

            recorded = RunOptions(**{k: v for k, v in options.items() if k in CORE_FIELDS and k != "plugin"})
            recorded.dataset, recorded.data_root = name, data_root or recorded.data_root
            data = load_run_data(recorded)
        else:
            data = load_dataset(name, data_root or options.get("data_root"))
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
    from toolbox.channels import require_ratio
    from toolbox.prune_file import prune_checkpoint

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
    from toolbox.check_command import check_arguments, check_command, exit_code

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
    from toolbox.report import rows_markdown, write_comparison

    target = out or dirs[0]
    rows = write_comparison(dirs, target)
    console.print(rows_markdown(rows), markup=False, highlight=False)
    console.print(f"written: {target}/report.md, report.csv, report.json, top1_vs_step.png", markup=False, highlight=False)


@plugins_app.command("list")
@user_errors
def plugins_list() -> None:
    """Installed plugins: name, source (built-in or package version), hooks implemented."""
    from toolbox.plugin_manager import _load_entry_point, available_plugins, hooks_of, instantiate

    table = Table(title="toolbox plugins")
    for column in ("name", "source", "hooks"):
        table.add_column(column)
    for name, info in available_plugins().items():
        try:
            hooks = ", ".join(h.removeprefix("toolbox_") for h in hooks_of(instantiate(_load_entry_point(name))))
        except Exception as exc:  # a broken third-party plugin must not hide the others
            hooks = f"(failed to load: {exc})"
        table.add_row(name, info.source, hooks)
    console.print(table)


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


def main() -> None:
    """Console-script entry point (also ``python -m toolbox.cli``).

    A malformed command line (e.g. a flag missing its value) is one ``Error:`` line with exit
    code 2, like every other user error.
    """
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        error_console.print("Aborted.", markup=False, highlight=False)
        sys.exit(1)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
            app()  # typer's own rendering: the help of the command named without arguments
            return
        message = exc.format_message().strip().rstrip(".")
        error_console.print(f"Error: {message}; see toolbox --help.", markup=False, highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
