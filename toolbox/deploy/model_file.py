"""Which model file a path means: a file is itself; a run directory means ``serve/current.pt``
(the promoted model) when present, else the newest ``serve/step{k}.pt``.

(Stand-in with the predictor branch's contract, until that branch is merged.)
"""

from __future__ import annotations

import re
from pathlib import Path

from toolbox.errors import UsageError


def resolve_model(path: str | Path) -> Path:
    """The model file ``path`` names (see the module docstring)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UsageError(f"{path} does not exist; pass a serve file (RUN/serve/stepK.pt) or a run directory.")
    serve = path / "serve"
    if (serve / "current.pt").is_file():
        return serve / "current.pt"
    steps = sorted((int(m.group(1)), p) for p in serve.glob("step*.pt") if (m := re.fullmatch(r"step(\d+)\.pt", p.name)))
    if not steps:
        raise UsageError(f"{path} holds no served model (serve/current.pt or serve/stepK.pt); "
                         "pass a run directory after its first step, or a model file.")
    return steps[-1][1]
