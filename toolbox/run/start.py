"""Opening a run: :func:`start_run` (a fresh one, from merged config and flags) and
:func:`resume_run` (one in its directory, from its config.yaml and last complete checkpoint)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from toolbox.errors import UsageError
from toolbox.options import build_options, plugin_names
from toolbox.plugin_host.calls import declared_options
from toolbox.plugin_host.manager import dormant_options, load_plugins
from toolbox.run import directory as files
from toolbox.run import lock as runlock
from toolbox.run import resume
from toolbox.run.run import Run
from toolbox.runtime import distributed
from toolbox.storage import checkpoint as ckpt

log = logging.getLogger("toolbox")


def start_run(values: dict[str, Any], progress: Callable[..., Any] | None = None,
              init: Path | None = None, extra_plugins: dict[str, Any] | None = None) -> Run:
    """Validate ``values`` (merged config + flags), load plugins and data, prepare a fresh run.

    ``init`` starts from a checkpoint's weights and masks; its arch and model options win.
    ``extra_plugins`` registers plugin objects directly (name -> object), after ``--plugins``.
    """
    distributed.init()
    if init is not None:
        recorded = distributed.run_on_main(ckpt.load_checkpoint, init)
        values = {**values, "arch": recorded["arch"], "model_kwargs": recorded.get("model_kwargs") or {}}
    pm = load_plugins(plugin_names(values), extra_plugins)
    options = build_options(dict(values), declared_options(pm), dormant_options(plugin_names(values)))
    run_dir = Path(distributed.broadcast_object(str(options.out or files.default_run_dir(options))))
    distributed.run_on_main(files.check_new_out, run_dir)
    options.out = str(run_dir)
    files.absolute_paths(options)
    if options.seeds:
        raise UsageError("--seeds runs several experiments; use toolbox.run.seeds.run_seeds (the CLI does) "
                         "instead of start_run.")
    run = Run(options, pm, run_dir, progress)
    if init is not None:
        run.initialize_from(init)
    distributed.run_on_main(runlock.hold, run, run_dir)  # after the data is known to be good
    if distributed.run_on_main(files.holds_run, run_dir, list(run.phases)):
        raise UsageError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it or another --out.")
    run.prepare_directory()
    return run


def resume_run(run_dir: Path, progress: Callable[..., Any] | None = None,
               extra_plugins: dict[str, Any] | None = None, changes: dict[str, Any] | None = None) -> Run:
    """Reopen the run in ``run_dir`` from its config.yaml and last complete checkpoint; ``changes``
    (flags given with ``--resume``) as :func:`toolbox.run.resume.resumed_options` allows."""
    distributed.init()
    run_dir = Path(run_dir)
    distributed.run_on_main(files.check_run_directory, run_dir)
    values = distributed.run_on_main(files.read_run_config, run_dir)
    pm = load_plugins(plugin_names(values), extra_plugins)
    options, changed = resume.resumed_options(values, changes or {}, declared_options(pm))
    for flag in ("test", "val"):
        folder = getattr(options, flag)
        if folder and not distributed.run_on_main(Path(folder).is_dir):
            raise UsageError(f"The run's {'test' if flag == 'test' else 'validation'} folder {folder} does not exist "
                             f"(moved or deleted); pass its new place with --{flag} DIR (`toolbox step` and "
                             "`toolbox run --resume` take it).")
    run = Run(options, pm, run_dir, progress)
    distributed.run_on_main(runlock.hold, run, run_dir)
    if changed:
        distributed.run_on_main(files.write_config, run_dir, options)  # the changes, under the run's lock
    where = run.restore()
    if where is None:
        log.warning("No complete phase in %s; starting it from the beginning.", run_dir)
        run.prepare_directory()
    else:
        log.info("Resuming %s at %s.", run_dir, where)
    return run
