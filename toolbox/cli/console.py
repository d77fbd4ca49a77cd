"""What a person sees in the terminal: progress bars, log lines and the results table.

Rich progress bars on a terminal, one plain line per epoch otherwise (CI logs); under torchrun
only rank 0 prints and logs below ERROR, so the output reads like a single-process run's.
torch and the run modules are imported inside the functions: ``toolbox --help`` starts without them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rich.console import Console

console = Console(soft_wrap=True)
error_console = Console(stderr=True, soft_wrap=True)


class Progress:
    """Rich progress bars on a terminal, one plain log line per epoch otherwise (CI)."""

    def __init__(self) -> None:
        self.live = console.is_terminal
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, event: str, **info: Any) -> None:
        """Receive a progress event from the run."""
        if event == "phase" and self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.close()
            self.bar = RichProgress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(),
                                    TimeRemainingColumn(), console=console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(f"step {info['step']} {info['phase']}", total=info["batches"])
        elif event == "batch" and self.bar is not None:
            self.bar.advance(self.task)
        elif event == "epoch":
            from toolbox.run.log_file import epoch_line

            line = epoch_line(info["step"], info["phase"], info["epoch"], info["epochs"], info["metrics"])
            (self.bar.console.log if self.bar is not None else console.print)(line, markup=False, highlight=False)
        elif event == "phase_end":
            from toolbox.run.log_file import phase_line

            self.close()
            console.print(phase_line(info["step"], info["phase"], info["record"]), markup=False, highlight=False)

    def close(self) -> None:
        """Stop a live progress bar."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def print_results(results: dict[str, Any]) -> None:
    """The results table at the end of a run (rank 0 only under torchrun)."""
    from rich.table import Table

    from toolbox.run.results import served_cell, shows_top5

    if not is_main():
        return
    table = Table(title=f"results in % of the test set ({results.get('dataset_source', '')})")
    top5 = shows_top5(results["steps"])
    for column in ("step", "phases", "top-1", *(("top-5",) if top5 else ()), "served", "train s", "params", "sparsity"):
        words = column in ("phases", "served")  # these wrap at spaces; the numbers never
        table.add_column(column, justify="left" if words else "right", no_wrap=not words)
    for step in results["steps"]:
        sparsity = step.get("sparsity")
        top5_cell = ("-" if step.get("top5") is None else f"{step['top5']:.2f}",) if top5 else ()
        table.add_row(str(step["step"]), " ".join(p["phase"] for p in step["phases"]),
                      f"{step['top1']:.2f}", *top5_cell, served_cell(step).replace("(", "").replace(")", ""),
                      f"{step['train_seconds']:.1f}", f"{step['params']:,}", "-" if sparsity is None else f"{sparsity:.3f}")
    console.print(table)


class _CurrentStderr(logging.StreamHandler):
    """A log handler writing to whatever ``sys.stderr`` is at the time of each message (a test
    runner that swaps stderr per command never meets a closed stream)."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """Ignored: the stream is always the current stderr."""


class ConsoleFormatter(logging.Formatter):
    """Information as the plain message; only what a user may need to act on is labelled
    (``Warning: ...``, ``Error: ...``). run.log keeps the level of every line."""

    def format(self, record: logging.LogRecord) -> str:
        """The message, prefixed with its level from WARNING up."""
        message = super().format(record)
        if record.levelno < logging.WARNING:
            return message
        return f"{'Warning' if record.levelno < logging.ERROR else 'Error'}: {message}"


def setup_logging() -> None:
    """INFO and above of every logger to stderr (:class:`ConsoleFormatter`; installed once); under
    torchrun only rank 0 logs below ERROR, so the log reads like a single-process run's."""
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(ConsoleFormatter())
        root.addHandler(handler)
    root.setLevel(logging.INFO if is_main() else logging.ERROR)


def say(text: str) -> None:
    """Print a line of the command's output (rank 0 only under torchrun)."""
    if is_main():
        console.print(text, markup=False, highlight=False)


def is_main() -> bool:
    """Whether this process prints: rank 0 of a torchrun job, or the only process (decided without
    importing torch when torchrun did not start several)."""
    import os

    try:
        several = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:
        several = True  # let the distributed module judge the value
    if not several and "torch.distributed" not in sys.modules:
        return True
    from toolbox.runtime import distributed

    return distributed.is_main()
