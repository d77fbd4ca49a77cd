"""The one place that reads the toolbox's entry points and imports what they name.

``toolbox.plugins``: built-in plugins are registered in the project's own ``pyproject.toml`` under
that group exactly like a third-party package's, so the core never names one. An entry point may
name a class (instantiated once per run, so state lives on the instance), an instance, or a module.

``toolbox.models``: modules that register backbones with timm's ``@register_model``; every one
installed is imported (:func:`import_model_packages`) before a model is built, like
``--models-from``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable

from toolbox.errors import UsageError

ENTRY_POINT_GROUP = "toolbox.plugins"
MODELS_GROUP = "toolbox.models"
BUILTIN_DISTRIBUTION = "toolbox"


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin comes from."""

    name: str
    value: str
    distribution: str
    version: str

    @property
    def source(self) -> str:
        """``built-in`` or ``<package> <version>``."""
        if self.distribution == BUILTIN_DISTRIBUTION:
            return "built-in"
        return f"{self.distribution} {self.version}"


def _entry_points(group: str = ENTRY_POINT_GROUP) -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def _distribution(ep: metadata.EntryPoint) -> str:
    return ep.dist.metadata["Name"] if ep.dist is not None else "?"


def available_plugins() -> dict[str, PluginInfo]:
    """Every plugin installed under the ``toolbox.plugins`` entry-point group, by name."""
    found: dict[str, PluginInfo] = {}
    for name, ep in _entry_points().items():
        found[name] = PluginInfo(name=name, value=ep.value, distribution=_distribution(ep),
                                 version=ep.dist.version if ep.dist is not None else "?")
    return dict(sorted(found.items()))


def load_entry_point(name: str) -> Any:
    """The object behind installed plugin ``name`` (a class, instance or module); KeyError if none."""
    return _entry_points()[name].load()


def load_installed(names: Iterable[str]) -> dict[str, Any]:
    """The objects behind those of ``names`` that are installed and import (the others left out:
    a broken plugin is reported when a run loads it, not when its declarations are read)."""
    entry_points = _entry_points()
    found: dict[str, Any] = {}
    for name in names:
        if name not in entry_points:
            continue
        try:
            found[name] = entry_points[name].load()
        except Exception:  # noqa: BLE001 - a broken third-party plugin must not block other commands
            continue
    return found


def load_all_installed() -> dict[str, Any]:
    """:func:`load_installed` for every installed plugin."""
    return load_installed(_entry_points())


def instantiate(obj: Any) -> Any:
    """A class becomes an instance; a module or instance is used as it is."""
    return obj() if inspect.isclass(obj) else obj


_imported_models: set[str] = set()


def import_model_packages() -> list[str]:
    """Import every module installed under the ``toolbox.models`` entry-point group (each once per
    process; importing it registers its backbones with timm) and return their names; one that fails
    to import is a :class:`UsageError` naming its package and entry point."""
    names = []
    for name, ep in sorted(_entry_points(MODELS_GROUP).items()):
        names.append(ep.value)
        if ep.value in _imported_models:
            continue
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - a third-party package: one sentence, not a traceback
            detail = (str(exc).strip().splitlines() or [""])[0][:150]
            raise UsageError(f"The installed package {_distribution(ep)} declares the {MODELS_GROUP} entry point "
                             f"{name} = {ep.value}, which failed to import ({type(exc).__name__}: {detail}); "
                             f"fix or uninstall {_distribution(ep)}.") from None
        _imported_models.add(ep.value)
    return names
