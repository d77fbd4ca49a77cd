"""Phases: ``learn`` is the core's; every other phase is declared by the plugin that adds it.

A plugin class declares ``phases = {"sparsify": 1}``: each phase it may ask for (through
``toolbox_phases``) with its place after ``learn`` (1, 2, ...). A step runs its phases in that
order, and the place seeds the phase's random draws (so adding a plugin never changes the draws
of another plugin's phase). Two plugins may declare the same phase only at the same place.
"""

from __future__ import annotations

from typing import Any, Iterable

from toolbox import capabilities as cap
from toolbox.errors import UsageError

LEARN = "learn"


def declared_phases(plugins: Iterable[Any]) -> dict[str, int]:
    """``learn`` (place 0) plus the phases the plugins declare, name -> place, in order."""
    found: dict[str, int] = {LEARN: 0}
    for plugin in plugins:
        for name, place in (getattr(plugin, "phases", None) or {}).items():
            if found.get(name, place) != place or (name == LEARN and place != 0):
                raise UsageError(f"Plugins declare phase {name!r} at two places ({found[name]} and {place}); "
                                 "one of them must rename its phase.")
            found[name] = int(place)
    return dict(sorted(found.items(), key=lambda item: item[1]))


def installed_phases() -> dict[str, int]:
    """The phases of every installed plugin (what a config's ``phase_epochs`` may name)."""
    from importlib import metadata

    names = [ep.name for ep in metadata.entry_points(group=cap.ENTRY_POINT_GROUP)]
    return declared_phases(cap.installed(names).values())
