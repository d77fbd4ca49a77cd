"""Backbones from outside the toolbox: ``--models-from FILE_OR_MODULE``, imported before timm's
registry is read.

A source is a Python file (``examples/register_architecture.py``: imported under its file name) or
an importable module (``my_package.backbones``); importing it registers its models with timm's
``@register_model``. Each source is imported once per process.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

from toolbox.errors import UsageError

_imported: set[str] = set()


def import_sources(sources: Iterable[str]) -> None:
    """Import every source (a ``.py`` file or a module name); one that is missing or fails to
    import is a :class:`UsageError` naming it."""
    for source in sources:
        if source in _imported:
            continue
        if source.endswith(".py") or "/" in source or Path(source).is_file():
            _import_file(Path(source).expanduser())
        else:
            _import_module(source)
        _imported.add(source)


def _import_file(path: Path) -> None:
    """Import the Python file ``path`` as the module named after its stem."""
    if not path.is_file():
        raise UsageError(f"--models-from {path}: no such file; pass a Python file or an importable module.")
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise UsageError(f"--models-from {path} is not a Python file; pass a .py file or a module name.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: one sentence, not a traceback
        del sys.modules[name]
        raise UsageError(f"--models-from {path} failed to import ({type(exc).__name__}: {exc}); fix that file.") from None


def _import_module(name: str) -> None:
    """Import module ``name``."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise UsageError(f"--models-from {name}: no such module or file; pass a Python file or an importable "
                             "module.") from None
        raise UsageError(f"--models-from {name} failed to import ({exc}); install what it needs.") from None
    except Exception as exc:  # noqa: BLE001 - the user's module: one sentence, not a traceback
        raise UsageError(f"--models-from {name} failed to import ({type(exc).__name__}: {exc}).") from None

