"""``toolbox tune --workers N``: N worker processes on this machine sharing one study.

Each worker is ``toolbox tune --study DIR`` in its own process; they split the cores (threads per
worker: cores // N) and the visible GPUs (round robin), and all join the study's storage.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from toolbox.errors import UsageError

if TYPE_CHECKING:
    from toolbox.tune.study import StudySpec, WorkerOptions

log = logging.getLogger("toolbox")


def launch_workers(study_dir: Path, count: int, options: WorkerOptions, spec: StudySpec) -> None:
    """Run ``count`` worker processes here (``toolbox tune --study DIR``), splitting the cores
    (threads per worker: cores // count, unless the config or ``--threads`` sets them) and the
    visible GPUs (round robin); wait for all of them."""
    threads = options.threads
    if threads is None and "threads" not in spec.config:
        threads = max(1, available_cores() // count)
    command = [sys.executable, "-m", "toolbox.cli", "tune", "--study", str(study_dir),
               "--trials", str(options.trials), "--pruner", options.pruner, "--heartbeat", str(options.heartbeat)]
    if threads:
        command += ["--threads", str(threads)]
    log.info("Starting %d workers%s.", count, f" with {threads} thread(s) each" if threads else "")
    workers = [subprocess.Popen(command, env=worker_env(index)) for index in range(count)]
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait()
    failed = [(index, code) for index, code in enumerate(codes) if code != 0]
    if failed:
        index, code = failed[0]
        raise UsageError(f"Worker {index + 1} of {count} stopped with exit code {code} (its messages are above); "
                         "the study keeps every finished trial: rerun the command to continue.")


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_env(index: int) -> dict[str, str]:
    """The environment of worker ``index``: one of the visible GPUs when there are several."""
    env = dict(os.environ)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    if len(devices) > 1:
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
    return env
