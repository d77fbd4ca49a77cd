"""The ``toolbox`` commands that put a model to work: export (ONNX / TorchScript, parity-checked)
and serve (the HTTP endpoint that follows the promoted model).

They register on the shared app of :mod:`toolbox.cli.app`; :mod:`toolbox.cli.commands` imports this module.
"""

from __future__ import annotations

from pathlib import Path

import typer

from toolbox.cli.app import app, user_errors
from toolbox.cli.console import console


@app.command()
@user_errors
def export(
    model: Path = typer.Argument(..., help="A serve file (RUN/serve/stepK.pt), checkpoint, or run directory (its promoted model)."),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Path = typer.Option(..., help="The file to write (never one the toolbox did not write)."),
) -> None:
    """Export a model for a runtime, written only if the runtime's logits match PyTorch's (max abs difference <= 1e-4)."""
    from toolbox.deploy.export import TOLERANCE, export_model

    result = export_model(model, format, out)
    extra = f" (+ {result.sidecar})" if result.sidecar else ""
    console.print(f"{result.source} (step {result.step}) -> {result.out}{extra}: {format} logits match PyTorch, "
                  f"max abs difference {result.max_abs_diff:.2e} <= {TOLERANCE:g}", markup=False, highlight=False)
