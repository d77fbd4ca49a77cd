"""``RUN_DIR/run.log``: the run's log lines, with time stamps, kept beside its results.

While a run's directory is open, a file handler on the ``toolbox`` logger copies every message
the console log shows into ``run.log`` (appended to on resume), plus one line per epoch and per
phase (the lines the CLI prints as progress, written to the file only). One run logs to its
file at a time: opening a run's log detaches a log another run of the process left open.

:func:`save_traceback` keeps the traceback of an unexpected error for the CLI: in the run.log
opened last (since :func:`forget_last_log`), else in a crash log of its own.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

from toolbox.storage.atomic import atomic_write_text

LOG_NAME = "run.log"
LOGGER = "toolbox"
PROGRESS_LOGGER = "toolbox.progress"  # epoch and phase lines: run.log only (the CLI prints its own)
FORMAT = "%(asctime)s %(levelname)s %(message)s"
CRASH_ENV = "TOOLBOX_CRASH_DIR"  # where crash logs go (default ~/.cache/toolbox)

_last_log: list[Path] = []  # the run.log opened last (at most one path)


def epoch_line(step: int, phase: str, epoch: int, epochs: int, metrics: Mapping[str, Any]) -> str:
    """One epoch's summary: loss, train top-1, lr and throughput."""
    return (f"step {step} {phase} epoch {epoch}/{epochs}: loss {metrics.get('loss', float('nan')):.4f} "
            f"train top-1 {metrics.get('train_top1', 0):.2f}% lr {metrics.get('lr', 0):.4g} "
            f"{metrics.get('images_per_second', 0):.0f} img/s")


def phase_line(step: int, phase: str, record: Mapping[str, Any]) -> str:
    """One phase's summary: test top-1, top-5 (where there are more than five classes), training seconds."""
    top5 = f"top-5 {record['top5']:.2f}% " if record.get("top5") is not None else ""
    return f"step {step} {phase} done: test top-1 {record['top1']:.2f}% {top5}({record['train_seconds']:.1f} s)"


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
        _last_log[:] = [Path(self.handler.baseFilename)]
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


def forget_last_log() -> None:
    """Forget the run.log opened last (the CLI does at the start of every command)."""
    _last_log.clear()


def save_traceback(exc: BaseException) -> Path | None:
    """Append ``exc``'s traceback to the run.log opened last, else write it to a new crash log
    (``$TOOLBOX_CRASH_DIR`` or ``~/.cache/toolbox``, ``crash-<time>-<pid>.log``); return the
    file's path, or ``None`` when neither could be written."""
    record = logging.makeLogRecord({"name": LOGGER, "levelno": logging.ERROR, "levelname": "ERROR",
                                    "msg": f"unexpected {type(exc).__name__}; its traceback:",
                                    "exc_info": (type(exc), exc, exc.__traceback__)})
    text = (logging.Formatter(FORMAT).format(record) + "\n").encode("utf-8", "backslashreplace").decode("utf-8")
    for path in _last_log:
        try:
            with open(path, "a", encoding="utf-8") as file:
                file.write(text)
            return path
        except OSError:
            pass
    folder = Path(os.environ.get(CRASH_ENV) or Path.home() / ".cache" / "toolbox").expanduser()
    path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError:
        return None
    return path
