"""Which model file a path means: a ``.pt`` file itself, or a run directory's promoted model.

A run directory (or its ``serve/`` folder) means ``serve/current.pt`` when it exists (the promoted
model, an atomic byte copy of one ``serve/step{k}.pt``), else the newest ``serve/step{k}.pt``.
Every command and function that takes ``MODEL_OR_RUN`` resolves it here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from toolbox.errors import UsageError

CURRENT_NAME = "current.pt"
_STEP_FILE = re.compile(r"step(\d+)\.pt")


def step_files(serve: Path) -> list[tuple[int, Path]]:
    """``(k, path)`` of every ``serve/step{k}.pt`` in ``serve``, by step number."""
    found = [(int(m.group(1)), serve / name) for name in os.listdir(serve)
             if (m := _STEP_FILE.fullmatch(name)) and (serve / name).is_file()]
    return sorted(found)


def resolve_model(path: str | os.PathLike[str]) -> Path:
    """The model file ``path`` names: the file itself, or for a run directory (or its ``serve/``
    folder) ``serve/current.pt`` when present, else the newest ``serve/step{k}.pt``; nothing there
    is one sentence."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.is_dir():
        raise UsageError(f"{path} does not exist; pass a serve file (RUN/serve/step{{k}}.pt), a toolbox checkpoint "
                         "or a run directory.")
    serve = given / "serve" if (given / "serve").is_dir() or given.name != "serve" else given
    current = serve / CURRENT_NAME
    if current.is_file():
        return current
    steps = step_files(serve) if serve.is_dir() else []
    if not steps:
        raise UsageError(f"{path} holds no served model (serve/{CURRENT_NAME} or serve/step{{k}}.pt); pass a run "
                         "directory with a finished step, or a .pt file.")
    return steps[-1][1]
