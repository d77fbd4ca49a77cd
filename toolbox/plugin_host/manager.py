"""The plugin manager: discovers plugins through the ``toolbox.plugins`` entry points.

Built-in plugins are registered in the project's own ``pyproject.toml`` under that entry-point
group, exactly like a third-party package would (and the core never names one). A combination of
plugins that cannot work is refused when they are loaded (:mod:`toolbox.plugin_host.capabilities`).
An entry point may name a class (instantiated once per run, so state lives on the instance),
an instance, or a module.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from toolbox import hookspecs
from toolbox.plugin_host.capabilities import ENTRY_POINT_GROUP, check_combination
from toolbox.errors import UsageError
from toolbox.options import PluginOption

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


def available_plugins() -> dict[str, PluginInfo]:
    """Every plugin installed under the ``toolbox.plugins`` entry-point group, by name."""
    found: dict[str, PluginInfo] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        found[ep.name] = PluginInfo(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else "?",
            version=dist.version if dist is not None else "?",
        )
    return dict(sorted(found.items()))


def _load_entry_point(name: str) -> Any:
    """Import the object behind entry point ``name``."""
    (ep,) = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    return ep.load()


def instantiate(obj: Any) -> Any:
    """A class becomes an instance; a module or instance is used as it is."""
    return obj() if inspect.isclass(obj) else obj


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
        register(pm, instantiate(_load_entry_point(name)), name)
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


def declared_options(pm: pluggy.PluginManager) -> dict[str, PluginOption]:
    """All options declared by the registered plugins, by name; conflicting redeclarations fail."""
    merged: dict[str, PluginOption] = {}
    for impl in pm.hook.toolbox_options.get_hookimpls():
        for opt in impl.function() or []:
            previous = merged.get(opt.name)
            if previous is not None and (previous.type, previous.default) != (opt.type, opt.default):
                raise UsageError(
                    f"Plugins disagree on option {opt.name!r} (type or default); "
                    f"plugin {impl.plugin_name!r} must rename it."
                )
            merged.setdefault(opt.name, opt)
    return merged


def has_impl(pm: pluggy.PluginManager, hook: str) -> bool:
    """Whether any registered plugin implements ``hook`` (lets the engine skip empty calls)."""
    return bool(getattr(pm.hook, hook).get_hookimpls())


def call_impl(impl: Any, **kwargs: Any) -> Any:
    """Call one pluggy hook implementation with the arguments it asks for."""
    return impl.function(*[kwargs[name] for name in impl.argnames])


#: Hooks that change the model between phases, chained together (the second is the deprecated alias).
SURGERY_HOOKS = ("toolbox_model_surgery", "toolbox_prune")


def chain_model_surgery(pm: pluggy.PluginManager, ctx: Any, model: Any) -> Any:
    """Call every ``toolbox_model_surgery`` (and deprecated ``toolbox_prune``) implementation in
    registration (``--plugins``) order, chaining the model."""
    order = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}
    impls = [impl for hook in SURGERY_HOOKS for impl in getattr(pm.hook, hook).get_hookimpls()]
    for impl in sorted(impls, key=lambda impl: order.get(impl.plugin_name, len(order))):
        result = call_impl(impl, ctx=ctx, model=model)
        if result is not None:
            model = result
    return model


def plugin_states(pm: pluggy.PluginManager, ctx: Any) -> dict[str, Any]:
    """``toolbox_state_dict`` of every plugin that implements it and returns something, by plugin name."""
    states: dict[str, Any] = {}
    for impl in pm.hook.toolbox_state_dict.get_hookimpls():
        value = call_impl(impl, ctx=ctx)
        if value is not None:
            states[impl.plugin_name] = value
    return states


def load_plugin_states(pm: pluggy.PluginManager, ctx: Any, states: dict[str, Any]) -> None:
    """Hand each plugin the state it saved (``toolbox_load_state_dict``); plugins without one are skipped."""
    for impl in pm.hook.toolbox_load_state_dict.get_hookimpls():
        if impl.plugin_name in states:
            call_impl(impl, ctx=ctx, state=states[impl.plugin_name])


def dormant_options(enabled: list[str]) -> dict[str, str]:
    """Options declared by installed plugins that are not enabled: option name -> plugin name.

    A plugin that fails to load is left out (its options then count as unknown).
    """
    found: dict[str, str] = {}
    for name in available_plugins():
        if name in enabled:
            continue
        try:
            plugin = instantiate(_load_entry_point(name))
            declare = getattr(plugin, "toolbox_options", None)
            for opt in (declare() if callable(declare) else None) or []:
                found.setdefault(opt.name, name)
        except Exception:  # noqa: BLE001 - a broken third-party plugin must not block runs
            continue
    return found
