"""Several seeds of one experiment: one run directory per seed and a comparison report.

``run_seeds`` writes the merged options to ``<out>/experiment.yaml`` and runs each seed in
``<out>/seed<k>/``; ``resume_seeds(out)`` finishes the seeds a kill interrupted (resuming started
ones, starting missing ones); ``toolbox report`` aggregates them (mean ± std).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from toolbox.errors import UsageError
from toolbox.options import build_options, plugin_names, read_mapping
from toolbox.plugin_host.calls import declared_options
from toolbox.plugin_host.manager import dormant_options, load_plugins
from toolbox.run import lock as runlock
from toolbox.run import results as report
from toolbox.run.directory import check_new_out, check_run_directory, default_run_dir, mark
from toolbox.run.run import Run
from toolbox.run.start import resume_run, start_run
from toolbox.runtime import distributed
from toolbox.storage.atomic import atomic_write_text

EXPERIMENT_FILE = "experiment.yaml"


def seed_dirs(out: Path, seeds: list[int]) -> dict[int, Path]:
    """The sub-directory of each seed of a multi-seed experiment."""
    return {seed: Path(out) / f"seed{seed}" for seed in seeds}


def run_seeds(values: dict[str, Any], progress: Callable[..., Any] | None = None,
              announce: Callable[[Run], None] | None = None) -> Path:
    """Run one experiment once per seed in ``<out>/seed<k>/`` and write the comparison report.

    ``values`` holds ``seeds``; the merged values are kept in ``<out>/experiment.yaml`` so
    ``resume_seeds(out)`` can finish the seeds a kill interrupted.
    """
    distributed.init()
    names = plugin_names(values)
    probe = build_options(dict(values), declared_options(load_plugins(names)), dormant_options(names))
    out = Path(distributed.broadcast_object(str(probe.out or default_run_dir(probe))))
    record = {k: v for k, v in values.items() if v is not None}
    record["out"] = str(out)
    distributed.run_on_main(runlock.acquire, out)
    try:
        distributed.run_on_main(_write_experiment, out, record)
        return _finish_seeds(out, record, progress, announce)
    finally:
        if distributed.is_main():
            runlock.release(out)


def _write_experiment(out: Path, record: dict[str, Any]) -> None:
    """Create ``out`` and write experiment.yaml; refuse a folder that already holds an experiment."""
    if (out / EXPERIMENT_FILE).exists():
        raise UsageError(f"{out} already holds an experiment; pass --resume {out} to continue it or another --out.")
    check_new_out(out)
    out.mkdir(parents=True, exist_ok=True)
    mark(out, kind="experiment")
    atomic_write_text(out / EXPERIMENT_FILE, yaml.safe_dump(record, sort_keys=False))


def resume_seeds(out: Path, progress: Callable[..., Any] | None = None,
                 announce: Callable[[Run], None] | None = None) -> Path:
    """Finish a multi-seed experiment: resume started seeds, start the missing ones."""
    distributed.init()
    distributed.run_on_main(check_run_directory, Path(out), (EXPERIMENT_FILE,), "experiment")
    record = distributed.run_on_main(read_mapping, Path(out) / EXPERIMENT_FILE)
    distributed.run_on_main(runlock.acquire, out)
    try:
        return _finish_seeds(Path(out), record, progress, announce)
    finally:
        if distributed.is_main():
            runlock.release(out)


def _finish_seeds(out: Path, record: dict[str, Any], progress: Callable[..., Any] | None,
                  announce: Callable[[Run], None] | None) -> Path:
    seeds = [int(s) for s in (record["seeds"] if isinstance(record["seeds"], list) else str(record["seeds"]).split(","))]
    for seed, run_dir in seed_dirs(out, seeds).items():
        if distributed.run_on_main((run_dir / "config.yaml").exists):
            run = resume_run(run_dir, progress)
        else:
            run = start_run({**record, "seed": seed, "seeds": [], "out": str(run_dir)}, progress)
        if announce is not None:
            announce(run)
        run.execute()
    distributed.run_on_main(report.write_comparison, [out], out)
    return out
