"""What a run reports while it trains, on rank 0: ``run.log`` and TensorBoard events in ``tb/``.

:class:`RunLogs` is the run's one handle on both (:mod:`toolbox.run.log_file`, :mod:`toolbox.run.tensorboard`):
the log file opens with the run directory, the event files when training starts (then the resume
point, and so TensorBoard's purge step, is known); both close when ``Run.execute`` returns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from torch import nn

from toolbox.options import RunOptions
from toolbox.run.log_file import RunLog
from toolbox.run.tensorboard import PhaseKey, RunBoard
from toolbox.runtime import distributed
from toolbox.storage.atomic import KILL_ENV, kill_point

if TYPE_CHECKING:
    from toolbox.context import Context


class RunLogs:
    """run.log and tb/ of the run in ``run_dir``; nothing on other ranks, no tb/ with ``--tensorboard false``."""

    def __init__(self, run_dir: Path, options: RunOptions) -> None:
        self.run_dir = Path(run_dir)
        self.options = options
        self.log = RunLog(None)
        self.board = RunBoard(None, [], lambda phase: 1)

    def open_log(self) -> None:
        """Copy the log to run.log from now on (appended to on resume)."""
        if distributed.is_main() and not self.log.is_open:
            self.log = RunLog(self.run_dir)

    def start(self, order: list[PhaseKey], done: set[PhaseKey], partial: Mapping[str, Any] | None) -> None:
        """Before training ``order`` minus ``done`` (from ``partial``, if any): open both."""
        self.open_log()
        writes = distributed.is_main() and self.options.tensorboard
        self.board = RunBoard.open(self.run_dir if writes else None, order, self.options.epochs_for, done, partial)

    def around(self, order: list[PhaseKey], done: set[PhaseKey], partial: dict[str, Any] | None, final: bool,
               execute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Open both for the phases ``order`` (``done`` already, ``partial`` mid-way), call ``execute``
        (the run's training; it returns the results), write the hparams summary when the run is
        ``final`` (not stopped early), close both even on an error."""
        self.start(order, done, partial)
        try:
            results = execute()
            if final:
                self.board.hparams(self.options.to_dict(), results["steps"])
            return results
        finally:
            self.close()

    def epoch(self, step: int, phase: str, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> None:
        """After epoch ``epoch`` (1-based) of ``epochs``."""
        self.board.epoch(step, phase, epoch, metrics)
        self.log.epoch(step, phase, epoch, epochs, metrics)

    def phase(self, step: int, phase: str, record: Mapping[str, Any], model: nn.Module) -> None:
        """After a phase's evaluation (``record``: its entry in results.json)."""
        self.board.phase(step, phase, record, model)
        self.log.phase(step, phase, record)

    def review(self, step: int, entry: Mapping[str, Any]) -> None:
        """After a step's review (``entry``: the step's results entry, with ``update`` and ``promotion``)."""
        self.board.review(step, entry["phases"][-1]["phase"], entry)

    def close(self) -> None:
        """Close the event files and detach run.log."""
        self.board.close()
        self.log.close()


def batch_callback(progress: Callable[..., Any] | None, ctx: "Context") -> Callable[[], None] | None:
    """Progress per batch, plus the ``batch:`` kill point when a test asks for it; ``None`` if neither."""
    kill = os.environ.get(KILL_ENV, "").startswith("batch:")
    if progress is None and not kill:
        return None

    def on_batch() -> None:
        if progress is not None:
            progress("batch")
        if kill:
            kill_point(f"batch:{ctx.step}:{ctx.phase}:{ctx.epoch + 1}:{ctx.batch_index + 1}")

    return on_batch
