"""What a run reports while it trains, on rank 0: ``run.log`` and TensorBoard events in ``tb/``.

:class:`RunLogs` is the run's one handle on both (:mod:`toolbox.runlog`, :mod:`toolbox.tensorboard`):
the log file opens with the run directory, the event files when training starts (then the resume
point, and so TensorBoard's purge step, is known); both close when ``Run.execute`` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from toolbox import distributed
from toolbox.runlog import RunLog
from toolbox.tensorboard import PhaseKey, RunBoard


class RunLogs:
    """run.log and tb/ of the run in ``run_dir``; nothing on other ranks, no tb/ without ``tensorboard``."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.run_dir = Path(run_dir)
        self.tensorboard = tensorboard
        self.log = RunLog(None)
        self.board = RunBoard(None, [], lambda phase: 1)

    def open_log(self) -> None:
        """Copy the log to run.log from now on (appended to on resume)."""
        if distributed.is_main() and not self.log.is_open:
            self.log = RunLog(self.run_dir)

    def start(self, order: list[PhaseKey], epochs: Callable[[str], int], done: set[PhaseKey],
              partial: Mapping[str, Any] | None) -> None:
        """Before training ``order`` minus ``done`` (from ``partial``, if any): open both."""
        self.open_log()
        writes = distributed.is_main() and self.tensorboard
        self.board = RunBoard.open(self.run_dir if writes else None, order, epochs, done, partial)

    def epoch(self, step: int, phase: str, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> None:
        """After epoch ``epoch`` (1-based) of ``epochs``."""
        self.board.epoch(step, phase, epoch, metrics)
        self.log.epoch(step, phase, epoch, epochs, metrics)

    def phase(self, step: int, phase: str, record: Mapping[str, Any], model: nn.Module) -> None:
        """After a phase's evaluation (``record``: its entry in results.json)."""
        self.board.phase(step, phase, record, model)
        self.log.phase(step, phase, record)

    def finish(self, options: Mapping[str, Any], steps: list[dict[str, Any]]) -> None:
        """At the end of the run: the hparams summary."""
        self.board.hparams(options, steps)

    def close(self) -> None:
        """Close the event files and detach run.log."""
        self.board.close()
        self.log.close()
