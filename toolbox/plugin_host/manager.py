"""The plugin manager: the named plugins (from :mod:`toolbox.plugin_host.entry_points`) registered
against the hook specs, each checked as it registers, and the combination checked once
(:mod:`toolbox.plugin_host.capabilities`) when they are loaded.
"""

from __future__ import annotations

from typing import Any

import pluggy

from toolbox import hookspecs
from toolbox.errors import UsageError
from toolbox.plugin_host.calls import plugin_options
from toolbox.plugin_host.capabilities import check_combination
from toolbox.plugin_host.entry_points import available_plugins, instantiate, load_entry_point, load_installed


def make_manager() -> pluggy.PluginManager:
    """A plugin manager knowing the toolbox hook specs and no plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register ``plugin`` under ``name``, turning pluggy's validation errors into one sentence.

    A hook implementation with a misspelled name or argument names the spec does not know is
    refused here, naming the plugin and the hook.
    """
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        message = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
        raise UsageError(f"Plugin {name!r} does not fit the toolbox hooks: {message}") from None


def load_plugins(names: list[str], extra: dict[str, Any] | None = None) -> pluggy.PluginManager:
    """A manager with the named plugins registered (in the given order).

    An unknown name is a :class:`UsageError` listing the known ones. ``extra`` maps names to
    plugin objects registered directly (notebooks, tests), after the named ones.
    """
    pm = make_manager()
    known = available_plugins()
    for name in names:
        if name not in known:
            listing = ", ".join(known) or "none installed"
            raise UsageError(f"Unknown plugin {name!r}; known plugins: {listing}.")
        if pm.has_plugin(name):
            raise UsageError(f"Plugin {name!r} is listed twice in --plugins; list it once.")
        register(pm, instantiate(load_entry_point(name)), name)
    for name, plugin in (extra or {}).items():
        register(pm, plugin, name)
    check_combination({name: plugin for name, plugin in pm.list_name_plugin() if plugin is not None})
    return pm


def hooks_of(plugin: Any) -> list[str]:
    """Names of the toolbox hooks ``plugin`` implements."""
    return sorted(
        name for name in dir(plugin)
        if name.startswith("toolbox_") and callable(getattr(plugin, name, None))
        and hasattr(hookspecs, name)
    )


def dormant_options(enabled: list[str]) -> dict[str, str]:
    """Options declared by installed plugins that are not enabled: option name -> plugin name.

    A plugin that fails to load is left out (its options then count as unknown).
    """
    found: dict[str, str] = {}
    for name, obj in load_installed(n for n in available_plugins() if n not in enabled).items():
        try:
            for opt in plugin_options(instantiate(obj)):
                found.setdefault(opt.name, name)
        except Exception:  # noqa: BLE001 - a broken third-party plugin must not block runs
            continue
    return found
