"""The ``toolbox`` command in a subprocess, as a user runs it (optionally SIGKILLed at a kill point)."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
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


def forked_cli(*args: str, kill_at: str | None = None) -> int:
    """``toolbox ARGS`` through the console-script entry point in a forked copy of this process,
    SIGKILLed at ``kill_at``; its return code as :func:`toolbox_cli` gives it (-9 when killed).

    The same real process death (no cleanup, no ``finally``, files as the kill left them) without
    a fresh interpreter's imports (about 3 s of CPU each): for tests that kill a run many times.
    The child never returns into pytest (it always ends with ``os._exit``)."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.environ.pop(atomic.KILL_ENV, None)
            if kill_at:
                os.environ[atomic.KILL_ENV] = kill_at
            sys.argv = ["toolbox", *args]
            from toolbox.cli import main

            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - shown, then the child's exit code says it failed
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
