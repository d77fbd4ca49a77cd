"""``toolbox predict MODEL_OR_RUN PATHS... [--out preds.csv] [--top-k K]``: classify image files.

It registers on the shared app of :mod:`toolbox.cli.app`; :mod:`toolbox.cli.commands` imports this
module. The work is :mod:`toolbox.deploy.predict_files`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from toolbox.cli.app import app, user_errors
from toolbox.cli.console import console

#: Rows the table shows without --out.
SHOWN_ROWS = 20


@app.command("predict")
@user_errors
def predict(
    model: Path = typer.Argument(..., help="A serve file, a toolbox checkpoint, or a run directory (its promoted model: serve/current.pt, else the newest serve/step{k}.pt)."),
    paths: list[Path] = typer.Argument(..., help="Image files and folders (walked as training walks them; a folder of class folders is labelled by them)."),
    out: Optional[Path] = typer.Option(None, help="Write every prediction to this CSV (path, label, top-k classes and probabilities, error); default: print a short table."),
    top_k: int = typer.Option(1, help="Classes (with probabilities) to report per image."),
    batch_size: int = typer.Option(256, help="Images per forward pass."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
) -> None:
    """Predict the classes of images with a run's model, preprocessed exactly as it was trained."""
    from toolbox.deploy.predict_files import check_out, predict_files, shown, top1
    from toolbox.deploy.predictor import load_predictor
    from toolbox.errors import UsageError

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}.")
    if out is not None:
        check_out(out)
    predictor = load_predictor(model, device=device, batch_size=batch_size)
    images, predictions = predict_files(predictor, paths, top_k, out)
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    say(f"{predictor.path} (step {predictor.step}): {len(images)} image(s)")
    if out is None:
        table = Table()
        for column in ("path", "class", "probability", "error"):
            table.add_column(column, overflow="fold")
        for image, p in list(zip(images, predictions))[:SHOWN_ROWS]:
            table.add_row(shown(image.path), p.label or "", f"{p.probabilities[0]:.4f}" if p.error is None else "",
                          p.error or "")
        console.print(table)
        if len(images) > SHOWN_ROWS:
            say(f"... and {len(images) - SHOWN_ROWS} more; pass --out preds.csv for all of them.")
    else:
        say(f"written: {out}")
    bad = sum(p.error is not None for p in predictions)
    if bad:
        say(f"{bad} image(s) could not be read; the reasons are in the error column (none counts in a top-1).")
    score = top1(images, predictions)
    if score is not None:
        say(f"top-1 {score[0]:.2f}% on {score[1]} labelled image(s) (their class folders)")
