"""The ``toolbox`` command line (typer): the commands that train: run, step, train, tune.

The others (eval, prune, check, report, plugins, models) are :mod:`toolbox.cli.inspect_commands`'s,
``predict`` is :mod:`toolbox.cli.predict_command`'s, ``export`` and ``serve`` are
:mod:`toolbox.cli.deploy_commands`'; the app and what every command shares are :mod:`toolbox.cli.app`'s.

Core flags and plugin flags share one path: every ``--name VALUE`` goes through
:func:`toolbox.options.build_options` together with the config file, so a value is parsed and
validated in one place whatever its source. User errors exit with code 2 and one sentence.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from toolbox.cli import compare_command as cli_compare  # noqa: F401  (registers toolbox compare)
from toolbox.cli import deploy_commands as cli_deploy  # noqa: F401  (registers export and serve)
from toolbox.cli import inspect_commands as cli_inspect  # noqa: F401  (registers the inspecting commands)
from toolbox.cli import predict_command  # noqa: F401  (registers toolbox predict)
from toolbox.cli.app import EXTRA, app, merged_values, parse_extra_args, user_errors  # noqa: F401
from toolbox.cli.console import Progress, console, error_console, print_results, say, setup_logging
from toolbox.cli.help import RunHelpCommand
from toolbox.errors import UsageError


@app.command(context_settings=EXTRA, cls=RunHelpCommand)
@user_errors
def run(
    ctx: typer.Context,
    plugins: Optional[str] = typer.Option(None, help="Comma-separated plugins, e.g. sst,aod,msl (default: none, only the learn phase)."),
    arch: Optional[str] = typer.Option(None, help="Backbone name in timm's registry (default cifar_resnet20)."),
    dataset: Optional[str] = typer.Option(None, help="cifar100, tiny_imagenet, fashion_mnist, synthetic, auto (Fashion-MNIST where present, else synthetic) or imagefolder (your own class folders: --data-root DIR with train/ and test/, or --train DIR --test DIR)."),
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

    The options after the first panel, and those of the plugins, are given as --name VALUE or as
    config keys. `toolbox run --plugins a,b --help` lists the options of plugins a and b.
    """
    from toolbox.run.seeds import EXPERIMENT_FILE, resume_seeds, run_seeds
    from toolbox.run.start import resume_run, start_run
    from toolbox.runtime import distributed

    setup_logging()
    distributed.init()
    progress = Progress()

    def announce(runner: Any) -> None:
        processes = f"  processes: {distributed.world_size()}" if distributed.active() else ""
        say(f"run directory: {runner.run_dir}  device: {runner.device}{processes}")

    experiment: Optional[Path] = None
    try:
        if resume is not None:
            changes = {**dict(plugins=plugins, arch=arch, dataset=dataset, data_root=data_root, steps=steps,
                              epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, seeds=seeds, out=out),
                       **parse_extra_args(ctx.args)}
            changes = {key: value for key, value in changes.items() if value is not None}
            if config is not None:
                raise UsageError("--resume takes its options from the run's config.yaml; pass flags to change "
                                 "the ones that may change (e.g. --lr), not --config.")
            if distributed.run_on_main((resume / EXPERIMENT_FILE).is_file):
                if changes:
                    raise UsageError("--resume of a multi-seed experiment takes its options from experiment.yaml; "
                                     "pass only --resume DIR.")
                experiment = resume_seeds(resume, progress, announce)
            else:
                runner = resume_run(resume, progress, changes=changes)
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
    allow_overlap: bool = typer.Option(False, help="Warn instead of refusing a folder whose images the run already "
                                       "trained on (more than half) or that shares images with the test folder."),
    test: Optional[Path] = typer.Option(None, help="The run's test folder, where it was moved to (default: the "
                                        "recorded one)."),
    val: Optional[Path] = typer.Option(None, help="The run's validation folder (--val), where it was moved to."),
    promote: Optional[str] = typer.Option(None, help="A new promotion rule from this step on (default: the run's)."),
) -> None:
    """Add one step to a finished run with a newly arrived folder of images; earlier folders are
    not needed."""
    from toolbox.run.add_step import add_step

    setup_logging()
    progress = Progress()
    try:
        runner = add_step(run_dir, data, progress, allow_overlap, test, val, promote)
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
    from toolbox.run.start import start_run

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


@app.command("tune", context_settings=EXTRA)
@user_errors
def tune_command(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, help="The run's YAML/TOML config; it needs val_per_class (validation images per class)."),
    space: Optional[Path] = typer.Option(None, help="YAML search space: per option a range {low: A, high: B} (optional log: true, step: S, type: int) or a list of choices."),
    study: Optional[Path] = typer.Option(None, help="Study folder: tune.yaml, study.db and one run directory per trial in trials/NNNN."),
    trials: Optional[int] = typer.Option(None, help="Finished (complete or pruned) trials to reach, over all workers (default: the study's, else 20)."),
    objective: Optional[str] = typer.Option(None, help="Validation top-1 averaged over the steps (mean, default) or of the last step (last)."),
    pruner: str = typer.Option("median", help="median, hyperband, none, or threshold:VALUE (stop a trial below VALUE % validation top-1)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage the workers share: sqlite:///FILE, postgresql://USER@HOST/DB, journal:PATH (default: sqlite in the study folder)."),
    study_name: Optional[str] = typer.Option(None, help="The study's name in the storage (default: the study folder's name)."),
    workers: int = typer.Option(1, help="Worker processes to start here; the cores (and GPUs) are split between them."),
    threads: Optional[int] = typer.Option(None, help="CPU threads per worker (default: the config's, else cores // workers)."),
    heartbeat: int = typer.Option(60, help="Seconds between a worker's heartbeats; a trial silent for twice this is marked FAIL."),
    show: Optional[Path] = typer.Option(None, help="Print this study's trials table; write best.yaml and importance.png into it."),
) -> None:
    """Search hyper-parameters on the validation split with Optuna: every trial is a run in STUDY/trials/NNNN.

    Any run option given as --name VALUE overrides the config. Rerun the same command to continue a
    killed study; start more workers (here or on other machines) with the same command and --storage.
    """
    from toolbox.tune import report as tune_report
    from toolbox.tune import study as tune
    from toolbox.tune.workers import launch_workers

    setup_logging()
    if show is not None:
        tune_report.show_study(show, console)
        return
    if study is None:
        raise UsageError("Pass --study DIR (the study folder), or --show DIR to look at one.")
    for name, value in (("trials", trials), ("workers", workers), ("heartbeat", heartbeat), ("threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}.")
    tune.make_pruner(pruner, 1)
    if space is None and (config is not None or ctx.args or objective is not None):
        raise UsageError("Pass --space FILE with --config (a new study), or only --study to continue one.")
    spec = None
    if space is not None:
        spec = tune.make_spec(merged_values(config, {}, ctx.args), space, objective or "mean")
    found, spec = tune.open_study(study, spec, storage, study_name, heartbeat)
    options = tune.WorkerOptions(trials=tune.trial_cap(found, trials), pruner=pruner, heartbeat=heartbeat, threads=threads)
    if workers > 1:
        launch_workers(study, workers, options, spec)
    else:
        tune.work(found, spec, study, options)
    console.print(tune_report.trials_table(found, spec, study))
    say(f"toolbox tune --show {study}: the table, best.yaml and importance.png")


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

