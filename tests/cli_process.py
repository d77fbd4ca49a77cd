"""The ``toolbox`` command in a subprocess, as a user runs it (optionally SIGKILLed at a kill point)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from toolbox.storage import atomic


def toolbox_cli(*args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m toolbox.cli ARGS`` in a subprocess, killed with SIGKILL at ``kill_at``."""
    env = {k: v for k, v in os.environ.items() if k != atomic.KILL_ENV}
    if kill_at:
        env[atomic.KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "toolbox.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def cli_flags(values: dict[str, Any]) -> list[str]:
    """``{"batch_size": 64}`` -> ``["--batch-size", "64"]``."""
    return [token for key, value in values.items() for token in ("--" + key.replace("_", "-"), str(value))]
