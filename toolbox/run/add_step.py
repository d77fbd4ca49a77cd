"""``toolbox step``: one more step for a finished run, when a new folder of images arrives.

The run (started with ``--shards``, which makes it open-ended) is reopened from its directory
under its lock; the new folder must hold exactly the run's classes; it becomes the next shard
(``config.yaml`` records it), and the enabled plugins' phases of a middle step run on it (with
``sst,aod,msl``: AOD on the new data, then SST + MSL so the model is ready for the next arrival).
No earlier step's folder is read: the new folder is checked against the manifests the run keeps
(``manifests.json``): a folder whose images, by content, the run already trained on (more than
half of them) or whose images are in the test folder is refused before anything is written
(``allow_overlap``: a warning). Results, metrics, plots and the model to serve are appended as
for any step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import yaml

from toolbox.data import shard_folders
from toolbox.data.imagefolder import class_folders
from toolbox.data.manifest import (Manifest, RunManifests, check_new_folder, check_test_overlap,
                                   check_validation_overlap, labelled_steps)
from toolbox.errors import UsageError
from toolbox.run.directory import absolute_path, read_manifests, read_run_config, record_skipped, write_manifests
from toolbox.run.run import Run
from toolbox.run.start import resume_run
from toolbox.runtime import distributed
from toolbox.storage.atomic import atomic_write_text

log = logging.getLogger("toolbox")


def check_classes(folder: Path, classes: list[str]) -> None:
    """The new folder must hold exactly the run's classes (this toolbox learns the same classes)."""
    found = class_folders(folder, "new image")
    extra = [name for name in found if name not in classes]
    if extra:
        raise UsageError(f"The new folder {folder} has class {extra[0]!r}, which the run does not know; every step "
                         f"learns the same {len(classes)} classes, so remove that class folder.")
    missing = [name for name in classes if name not in found]
    if missing:
        raise UsageError(f"The new folder {folder} has no folder for class {missing[0]!r}; every step learns the "
                         f"same {len(classes)} classes, so add its images.")


def check_overlap(run_dir: Path, values: dict[str, Any], data: Path, allow: bool,
                  skipped: list[str] | None = None) -> tuple[RunManifests, Manifest]:
    """Refuse a new folder the run already trained on or that shares images with its test folder
    (``allow``: a warning); return the run's manifests and the new folder's (its images
    ``--skip-bad-images`` left out go into ``skipped``). A run started before manifests were kept
    is checked against the folders that still exist."""
    options = SimpleNamespace(**values)
    manifests = distributed.run_on_main(read_manifests, run_dir) or RunManifests()
    manifests.steps.update(shard_folders.step_manifests(options, known=manifests.steps))
    if manifests.test is None and options.test and Path(options.test).expanduser().is_dir():
        manifests.test = shard_folders.folder_manifest(options, Path(options.test), "test image")
    new = shard_folders.folder_manifest(options, data, "new image", skipped)
    check_new_folder(new, manifests.steps, allow)
    if manifests.test is not None:
        check_test_overlap([("the new folder", new)], manifests.test, allow)
    if getattr(options, "val", None) and Path(options.val).expanduser().is_dir():
        val = shard_folders.load_validation(options).manifests[0]
        steps = labelled_steps(manifests.steps)
        check_validation_overlap(val, manifests.test, [*steps, ("the new folder", new)], allow)
    return manifests, new


def add_step(run_dir: Path, data: Path, progress: Callable[..., Any] | None = None,
             allow_overlap: bool = False, test: Path | None = None, val: Path | None = None,
             promote: str | None = None) -> Run:
    """Reopen the finished run in ``run_dir``, append ``data`` as its next step and return the
    run, ready for :meth:`Run.execute` (which trains just the new step). ``allow_overlap`` turns
    the refusal of a folder the run already trained on (or that shares test images) into a
    warning, and is recorded in the run's config; ``test`` (``val``) is the run's test (validation)
    folder where it was moved to; ``promote`` a new promotion rule from this step on."""
    run_dir, data = Path(run_dir), Path(data).expanduser().resolve()
    values = distributed.run_on_main(read_run_config, run_dir)
    if test is not None:
        values["test"] = absolute_path(test)  # for the overlap checks below
    if val is not None:
        values["val"] = absolute_path(val)
    if not values.get("shards"):
        raise UsageError(f"{run_dir} was not started with --shards, so it has no folders to add to; start the run "
                         "with `toolbox run --shards DIR1,DIR2 --test DIR` to add steps later.")
    check_classes(data, list(values.get("classes") or []))
    skipped: list[str] = []
    manifests, new = check_overlap(run_dir, values, data, allow_overlap, skipped)
    changes = {"test": None if test is None else str(test), "val": None if val is None else absolute_path(val),
               "promote": promote}
    run = resume_run(run_dir, progress, changes=changes)
    pending = [item for item in run.phase_order() if item not in run.state.done]
    if pending:
        raise UsageError(f"{run_dir} has unfinished phases (step {pending[0][0]} {pending[0][1]}); finish them with "
                         f"`toolbox run --resume {run_dir}` before adding a step.")
    run.options.shards = [*run.options.shards, str(data)]
    run.options.steps = len(run.options.shards)
    run.data.source = shard_folders.shard_source(run.options.steps, run.options.test)
    run.options.allow_overlap = run.options.allow_overlap or allow_overlap
    manifests.steps[run.options.steps] = new
    distributed.run_on_main(write_manifests, run_dir, manifests)
    distributed.run_on_main(record_skipped, run_dir, shard_folders.step_key(run.options.steps), skipped)
    distributed.run_on_main(atomic_write_text, run_dir / "config.yaml",
                            yaml.safe_dump(run.options.to_dict(), sort_keys=False))
    log.info("Adding step %d to %s with %s.", run.options.steps, run_dir, data)
    return run
