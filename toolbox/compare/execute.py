"""Running a comparison's runs: each an ordinary run directory ``DIR/runs/<row>/seed<k>/``.

A finished run (all its steps in results.json, its last phase's checkpoint written) is read, never
trained again; an interrupted one continues as ``toolbox run --resume`` does; a missing one
starts. ``workers`` > 1 trains that many runs side by side in their own processes (one thread
each unless the config sets ``threads``), like ``toolbox tune --workers``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Any, Callable

from toolbox.run.start import resume_run, start_run
from toolbox.storage import checkpoint as ckpt
from toolbox.tune.workers import available_cores

log = logging.getLogger("toolbox")


def run_dir(out: Path, row: str, seed: int) -> Path:
    """Where the run of ``row`` and ``seed`` lives."""
    return Path(out) / "runs" / row / f"seed{seed}"


def finished(folder: Path) -> dict[str, Any] | None:
    """The results of a finished run in ``folder`` (every step, the last phase's checkpoint), else None."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except ValueError:
        return None
    steps = results.get("steps") or []
    if len(steps) != results["config"]["steps"] or not steps[-1].get("phases"):
        return None
    last = steps[-1]
    return results if ckpt.phase_checkpoint_path(folder, last["step"], last["phases"][-1]["phase"]).is_file() else None


def finish_run(values: dict[str, Any], folder: str) -> dict[str, Any]:
    """The results of the run with ``values`` in ``folder``: read when finished, resumed when
    interrupted, else started."""
    path = Path(folder)
    results = finished(path)
    if results is not None:
        return results
    if (path / "config.yaml").is_file():
        return resume_run(path).execute()
    return start_run({**values, "out": str(path)}).execute()


def _worker_run(values: dict[str, Any], folder: str) -> str:
    """A worker process's job: finish one run (logging to the console like the parent)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    finish_run(values, folder)
    return folder


def run_all(jobs: list[tuple[dict[str, Any], Path]], workers: int = 1,
            done: Callable[[Path], None] | None = None) -> None:
    """Finish every ``(values, run dir)`` job, ``workers`` at a time; ``done(run dir)`` after each.
    A run that fails does not stop the others: they finish (and ``done`` reports them), then the
    first failure is raised. A kill (KeyboardInterrupt) stops everything at once."""
    todo = []
    for values, folder in jobs:  # each run's results read once
        if finished(folder) is None:
            todo.append((values, folder))
        elif done is not None:
            done(folder)
    failures: list[Exception] = []

    def settle(folder: Path, outcome: Callable[[], Any]) -> None:
        try:
            outcome()
        except Exception as error:  # noqa: BLE001 - raised again once the other runs are done
            log.error("%s failed (%s); the other runs go on.", folder, error)
            failures.append(error)
            return
        if done is not None:
            done(folder)

    if workers <= 1 or len(todo) <= 1:
        for values, folder in todo:
            settle(Path(folder), partial(finish_run, values, str(folder)))
    else:
        threads = max(1, available_cores() // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(_worker_run, {"threads": threads, **values}, str(folder)): Path(folder)
                       for values, folder in todo}
            for future in as_completed(futures):
                settle(futures[future], future.result)
    if failures:
        raise failures[0]
