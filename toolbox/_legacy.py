"""Old flat import paths (``toolbox.channels``, ``toolbox.distill``, ...), kept for one release.

Before 0.3 every module sat directly in ``toolbox/``. Importing one of those names now gives the
module at its new home (the same module object, so monkeypatching either name patches both) and a
``DeprecationWarning`` naming the new path. Nothing in the toolbox itself uses these names; the
finder is installed by ``toolbox/__init__.py`` and goes away with the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "plugin_manager": "plugin_host.manager",
    "capabilities": "plugin_host.capabilities",
    "phases": "plugin_host.phases",
    "device": "runtime.device",
    "distributed": "runtime.distributed",
    "io": "storage.atomic",
    "checkpoint": "storage.checkpoint",
    "structure": "storage.structure",
    "engine": "run.engine",
    "state": "run.state",
    "resume": "run.resume",
    "run_data": "run.inputs",
    "run_dir": "run.directory",
    "run_logs": "run.logs",
    "runlog": "run.log_file",
    "tensorboard": "run.tensorboard",
    "runlock": "run.lock",
    "experiment": "run.seeds",
    "step": "run.add_step",
    "serve": "run.serve_files",
    "report": "run.results",
    "channels": "sparsity.channels",
    "bn_l1": "sparsity.bn_l1",
    "target_schedule": "sparsity.target_schedule",
    "distill": "methods.distillation",
    "teachers": "methods.teachers",
    "reinit": "methods.reinit",
    "batchnorm": "methods.bn_statistics",
    "ewc": "methods.ewc",
    "warmstart": "methods.shrink_perturb",
    "compact": "pruning.compaction",
    "fold": "pruning.fold_constants",
    "bn_fold": "pruning.fold_batchnorm",
    "compact_teacher": "pruning.compact_teacher",
    "cost": "pruning.cost",
    "prune_file": "pruning.prune_file",
    "dryrun": "preflight.dry_run",
    "search_space": "tune.search_space",
    "study_storage": "tune.storage",
    "tune_report": "tune.report",
    "tune_workers": "tune.workers",
    "cli_app": "cli.app",
    "cli_inspect": "cli.inspect_commands",
    "cli_help": "cli.help",
    "check_command": "cli.check",
    "console": "cli.console",
}


class _AliasLoader(importlib.abc.Loader):
    """Hands out the module at its new home under the old name (the import system keeps the alias)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec; the module keeps its own


class LegacyFinder(importlib.abc.MetaPathFinder):
    """Finds ``toolbox.<old name>`` and warns where it lives now."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old flat name, else None (the normal finders go on)."""
        package, _, name = fullname.partition(".")
        if package != "toolbox" or name not in MOVED:
            return None
        new = f"toolbox.{MOVED[name]}"
        warnings.warn(f"{fullname} is deprecated and goes away in the next release: import {new}",
                      DeprecationWarning, stacklevel=2)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, LegacyFinder) for f in sys.meta_path):
        sys.meta_path.append(LegacyFinder())
