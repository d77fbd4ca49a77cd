"""Progress of a decode into the decoded cache: a bar on a terminal, else a log line now and then."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("toolbox")


class DecodeProgress:
    """Progress of a decode: a rich bar with images/s on a terminal, otherwise a log line at
    most every ``every`` seconds."""

    def __init__(self, what: str, total: int, every: float = 10.0) -> None:
        self.what, self.total, self.done, self.every = what, total, 0, every
        self.started = self.reported = time.perf_counter()
        self.bar: Any = None

    def __enter__(self) -> "DecodeProgress":
        if sys.stderr.isatty() and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("decoding {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} images/s"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.what, total=self.total, rate="-")
        else:
            log.info("Decoding %d %s (once; later runs read the cache).", self.total, self.what)
        return self

    def advance(self, count: int) -> None:
        """``count`` more images are decoded."""
        self.done += count
        now = time.perf_counter()
        rate = f"{self.done / max(now - self.started, 1e-9):.0f}"
        if self.bar is not None:
            self.bar.update(self.task, advance=count, rate=rate)
        elif now - self.reported >= self.every and self.done < self.total:
            log.info("Decoding %s: %d/%d (%s images/s).", self.what, self.done, self.total, rate)
            self.reported = now

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
