"""``toolbox compare``: which method for my data? Paired seeds, equal compute, optional equal tuning.

Thin: parse the command line, call :mod:`toolbox.compare.compare`, print the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from toolbox.cli.app import EXTRA, app, merged_values, user_errors
from toolbox.cli.console import console, say, setup_logging
from toolbox.errors import UsageError


def split_methods(args: list[str]) -> tuple[list[str], list[str]]:
    """The extra tokens after ``--methods A``: the leading bare words are more methods
    (``--methods "sst,aod,msl" finetune lwf``), the rest ``--name VALUE`` run options."""
    methods: list[str] = []
    for index, token in enumerate(args):
        if token.startswith("--"):
            return methods, args[index:]
        methods.append(token)
    return methods, []


@app.command("compare", context_settings=EXTRA)
@user_errors
def compare_command(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, help="The runs' YAML/TOML config (data, model, epochs, ...); --name VALUE overrides it."),
    methods: Optional[str] = typer.Option(None, help='Methods (--plugins values), the first is measured against the others: --methods "sst,aod,msl" finetune shrink_perturb lwf joint.'),
    seeds: str = typer.Option("0,1,2", help="Seeds; per seed every method sees the same shards (and, with the same step-1 settings, the same step-1 model and batch order)."),
    out: Optional[Path] = typer.Option(None, help="The comparison's folder: compare.yaml, runs/<row>/seed<k>/, compare.md/.json/.csv, the plot."),
    resume: Optional[Path] = typer.Option(None, help="Continue the comparison in this folder (finished runs are kept, interrupted ones resumed)."),
    rows: Optional[str] = typer.Option(None, help="Only these rows (comma-separated names, e.g. sst_aod_msl,finetune_2x,lwf); the first method's row stays."),
    equal_compute: bool = typer.Option(True, help="Also run every baseline with the first method's epochs per step (rows NAME_Kx)."),
    method_values: Optional[Path] = typer.Option(None, help="YAML: row name -> run options of that row only (e.g. tuned values)."),
    trials: int = typer.Option(0, help="Equal tuning: one toolbox tune study per row with this many trials on validation data (needs val_per_class)."),
    space: Optional[Path] = typer.Option(None, help="YAML: row name -> search space, replacing the space the row's plugins declare."),
    workers: int = typer.Option(1, help="Runs trained side by side (one process each; the cores are split between them)."),
) -> None:
    """Which method for my data? Train every method on the same data over seeds and compare them.

    Every row x seed is an ordinary run directory under --out; rerun the command (or --resume DIR)
    after a kill to continue. `toolbox report DIR` renders the report again.
    """
    from toolbox.compare.compare import new_plan, run_compare
    from toolbox.options import read_mapping

    setup_logging()
    if workers < 1:
        raise UsageError(f"--workers {workers}: pass at least 1 (runs side by side, one thread each).")
    if trials < 0:
        raise UsageError(f"--trials {trials}: pass 0 (no tuning, the default) or a number of tuning trials per method.")
    more, extra = split_methods(list(ctx.args))
    if resume is not None:
        if methods or more or extra or config is not None or out is not None:
            raise UsageError("--resume DIR continues the comparison recorded there; pass no --methods, --config or "
                             "run options with it (only --workers).")
        rows_done = run_compare(resume, None, space=space, workers=workers, announce=say)
        target = resume
    else:
        if not methods or out is None:
            raise UsageError('Pass --methods "A" B ... (at least two) and --out DIR, or --resume DIR.')
        base: dict[str, Any] = merged_values(config, {}, extra)
        chosen = read_mapping(method_values) if method_values is not None else None
        plan = new_plan(base, [methods, *more], seeds, equal_compute=equal_compute, rows=rows,
                        method_values=chosen, trials=trials)
        rows_done = run_compare(out, plan, space=space, workers=workers, announce=say)
        target = out
    console.print((target / "compare.md").read_text() if rows_done else "no run finished", markup=False,
                  highlight=False)
    say(f"written: {target}/compare.md, compare.json, compare.csv, top1_vs_step.png")
