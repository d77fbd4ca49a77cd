"""The ``toolbox`` commands that put a model to work: export (ONNX / TorchScript, parity-checked)
and serve (the HTTP endpoint that follows the promoted model).

They register on the shared app of :mod:`toolbox.cli.app`; :mod:`toolbox.cli.commands` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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


@app.command()
@user_errors
def serve(
    run_dir: Path = typer.Argument(..., help="A run directory: its promoted model (serve/current.pt), followed as it changes."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="TCP port."),
    max_upload_mb: float = typer.Option(16.0, help="Largest request body accepted (413 above it)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for inference (default: torch's)."),
) -> None:
    """Serve the run's promoted model over HTTP: POST /predict (image files -> top-k), GET /health, GET /model."""
    from toolbox.deploy.http_server import serve as serve_http

    serve_http(run_dir, host=host, port=port, max_upload_mb=max_upload_mb, threads=threads,
               announce=lambda line: console.print(line, markup=False, highlight=False))
