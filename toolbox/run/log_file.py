"""``RUN_DIR/run.log``: the run's log lines, with time stamps, kept beside its results.

While a run's directory is open, a file handler on the ``toolbox`` logger copies every message
the console log shows into ``run.log`` (appended to on resume), plus one line per epoch and per
phase (the lines the CLI prints as progress, written to the file only). One run logs to its
file at a time: opening a run's log detaches a log another run of the process left open.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

LOG_NAME = "run.log"
LOGGER = "toolbox"
PROGRESS_LOGGER = "toolbox.progress"  # epoch and phase lines: run.log only (the CLI prints its own)
FORMAT = "%(asctime)s %(levelname)s %(message)s"


def epoch_line(step: int, phase: str, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> str:
    """One epoch's summary: loss, train top-1, lr and throughput."""
    return (f"step {step} {phase} epoch {epoch}/{epochs}: loss {metrics.get('loss', float('nan')):.4f} "
            f"train top-1 {metrics.get('train_top1', 0):.2f}% lr {metrics.get('lr', 0):.4g} "
            f"{metrics.get('images_per_second', 0):.0f} img/s")


def phase_line(step: int, phase: str, record: Mapping[str, Any]) -> str:
    """One phase's summary: test top-1 and top-5, training seconds."""
    return (f"step {step} {phase} done: test top-1 {record['top1']:.2f}% top-5 {record['top5']:.2f}% "
            f"({record['train_seconds']:.1f} s)")


class RunLogHandler(logging.FileHandler):
    """The file handler of a ``run.log`` (its own class, so a stale one can be found)."""


def _detach(handler: logging.Handler) -> None:
    """Remove ``handler`` from both loggers and close it."""
    logging.getLogger(LOGGER).removeHandler(handler)
    logging.getLogger(PROGRESS_LOGGER).removeHandler(handler)
    handler.close()


class RunLog:
    """The open ``run.log`` of a run (nothing at all when ``run_dir`` is ``None``: other ranks)."""

    def __init__(self, run_dir: Path | None) -> None:
        self.handler: RunLogHandler | None = None
        if run_dir is None:
            return
        for stale in [h for h in logging.getLogger(LOGGER).handlers if isinstance(h, RunLogHandler)]:
            _detach(stale)  # a run that was never executed or finished, in this process
        self.handler = RunLogHandler(Path(run_dir) / LOG_NAME, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT))
        logging.getLogger(LOGGER).addHandler(self.handler)
        progress = logging.getLogger(PROGRESS_LOGGER)
        progress.propagate = False
        progress.setLevel(logging.INFO)
        progress.addHandler(self.handler)

    @property
    def is_open(self) -> bool:
        """Whether the file handler is attached (another run's log may have replaced it)."""
        return self.handler is not None and self.handler in logging.getLogger(LOGGER).handlers

    def epoch(self, step: int, phase: str, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> None:
        """Write an epoch line (``epoch`` is 1-based)."""
        if self.handler is not None:
            logging.getLogger(PROGRESS_LOGGER).info(epoch_line(step, phase, epoch, epochs, metrics))

    def phase(self, step: int, phase: str, record: Mapping[str, Any]) -> None:
        """Write a phase's summary line."""
        if self.handler is not None:
            logging.getLogger(PROGRESS_LOGGER).info(phase_line(step, phase, record))

    def close(self) -> None:
        """Detach and close the file handler."""
        if self.handler is not None:
            _detach(self.handler)
            self.handler = None
