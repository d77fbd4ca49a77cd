"""The model a run serves now, followed between requests.

:class:`LiveModel` answers with the model of ``RUN/serve/current.pt`` (the promoted model; the
newest ``serve/step{k}.pt`` while nothing is promoted). Before each request :meth:`LiveModel.get`
compares the file's identity (inode, mtime, size) with the loaded one's and, when it changed,
loads the new file and swaps it in. A request keeps the model it started with, so each answer
names the step whose model produced it; a file that cannot be loaded leaves the old model serving.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from toolbox.deploy.model_file import resolve_model
from toolbox.deploy.predictor import load_predictor
from toolbox.errors import UsageError

log = logging.getLogger("toolbox")


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or rewritten: (device, inode, mtime ns, size)."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size


@dataclass(frozen=True)
class Loaded:
    """One loaded model: its predictor, the step it answers for, the file and its identity."""

    predictor: Any
    step: int
    path: Path
    identity: tuple[int, int, int, int]


class LiveModel:
    """The served model of ``run_dir``, reloaded when its file changes (see the module docstring)."""

    def __init__(self, run_dir: str | Path, attempts: int = 3) -> None:
        self.run_dir = Path(run_dir)
        self.attempts = attempts
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None
        self._refused: tuple[int, int, int, int] | None = None  # a file that did not load: not tried again
        self.reloads = 0
        path = resolve_model(self.run_dir)  # nothing served: its one sentence
        identity = file_identity(path)  # before loading: a file replaced meanwhile is loaded again
        predictor = load_predictor(path)  # a file that does not load: its one sentence
        self._loaded = Loaded(predictor, int(predictor.step), path, identity)

    def _load(self) -> Loaded | None:
        """Load what the run serves now; ``None`` when it cannot be loaded (it is then not tried
        again until it changes) or is replaced while loading every time."""
        for _ in range(self.attempts):
            before = None
            try:
                path = resolve_model(self.run_dir)
                before = file_identity(path)
                predictor = load_predictor(path)
                if file_identity(path) == before:  # the bytes loaded are the file's of that identity
                    return Loaded(predictor, int(predictor.step), path, before)
            except (UsageError, OSError) as exc:
                self._refused = before
                log.warning("serve: keeping the model of step %s: %s", getattr(self._loaded, "step", "?"), exc)
                return None
        return None

    def _changed(self) -> bool:
        """Whether the served file is another than the loaded one (and not one that failed to load)."""
        try:
            identity = file_identity(resolve_model(self.run_dir))
        except (UsageError, OSError):
            return False
        return identity != self._refused and (self._loaded is None or identity != self._loaded.identity)

    def get(self) -> Loaded | None:
        """The model to answer this request with (reloaded first when the served file changed)."""
        if not self._changed():
            return self._loaded
        with self._lock:  # one reload at a time; requests meanwhile wait, then see the new model
            if self._changed():
                current, fresh = self._loaded, self._load()
                if fresh is not None:
                    if current is not None:
                        log.info("serve: step %d -> step %d (%s)", current.step, fresh.step, fresh.path)
                        self.reloads += 1
                    self._loaded = fresh
            return self._loaded

    def history(self) -> dict[str, Any]:
        """``serve/history.json``'s ``current`` entry (step, promotion time, gate numbers), ``{}`` without one."""
        try:
            data = json.loads((self.run_dir / "serve" / "history.json").read_text())
        except (OSError, ValueError):
            return {}
        current = data.get("current") if isinstance(data, dict) else None
        return current if isinstance(current, dict) else {}


def top_k(probabilities: Sequence[float], classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, most probable first: ``[{"class": name, "probability": p}]``."""
    order = sorted(range(len(probabilities)), key=lambda i: -float(probabilities[i]))[:k]
    return [{"class": classes[i], "probability": round(float(probabilities[i]), 6)} for i in order]
