"""Phases: ``learn`` is the core's; every other phase is declared by the plugin that adds it.

A plugin class declares ``phases = {"sparsify": 1}``: each phase it may ask for (through
``toolbox_phases``) with its place after ``learn`` (1, 2, ...). A step runs its phases in that
order, and the place seeds the phase's random draws (so adding a plugin never changes the draws
of another plugin's phase). Two plugins may declare the same phase only at the same place.
"""

from __future__ import annotations

from typing import Any, Iterable

import pluggy

from toolbox.errors import UsageError
from toolbox.plugin_host import calls
from toolbox.plugin_host.entry_points import load_all_installed

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
    return declared_phases(load_all_installed().values())


def phase_seed(seed: int, step: int, place: int) -> int:
    """The seed of every random draw in the phase at ``place`` of ``step`` (independent of earlier phases)."""
    return seed * 100_003 + step * 101 + place + 1


def run_phases(pm: pluggy.PluginManager) -> dict[str, int]:
    """The phases a run may plan, name -> place: ``learn``, those the enabled plugins declare, and
    (for a plugin that asks for a phase without declaring it) those installed plugins declare."""
    declared = declared_phases(plugin for _, plugin in pm.list_name_plugin())
    return dict(sorted({**installed_phases(), **declared}.items(), key=lambda item: item[1]))


def plan_phases(pm: pluggy.PluginManager, step: int, num_steps: int,
                known: dict[str, int] | None = None) -> list[str]:
    """``learn`` plus the phases plugins ask for, in their declared order."""
    known = run_phases(pm) if known is None else known
    wanted = {LEARN}
    for name in calls.wanted_phases(pm, step, num_steps):
        if name not in known:
            raise UsageError(f"A plugin asked for phase {name!r}, which no plugin declares; phases "
                             f"are {', '.join(known)} (declare it in the plugin's `phases`).")
        wanted.add(name)
    return [p for p in known if p in wanted]
