"""What ``toolbox compare`` runs: one row per method, an equal-compute row per baseline, every seed.

A method is a ``--plugins`` value (``sst,aod,msl``, ``finetune``); its row is named by its plugins
joined with ``_`` (``sst_aod_msl``). The first method is the one the others are measured against.
Equal compute: a baseline whose steps train fewer epochs than the first method's also runs with
``--epochs`` raised so that its busiest step trains as many epochs as the first method's busiest
step (a run's epochs are the same every step), e.g. ``finetune_2x`` beside ``sst,aod,msl``'s
learn + sparsify. The epochs per step come from the phases the plugins plan
(``toolbox_phases``) and ``--epochs``/``phase_epochs``, never from a table of known methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from toolbox.errors import UsageError
from toolbox.options import build_options, plugin_names
from toolbox.plugin_host.calls import declared_options
from toolbox.plugin_host.manager import dormant_options, load_plugins
from toolbox.plugin_host.phases import plan_phases, run_phases


@dataclass(frozen=True)
class Row:
    """One line of the comparison: a method (its plugins) with the run options it changes."""

    name: str
    plugins: tuple[str, ...]
    changes: dict[str, Any] = field(default_factory=dict, hash=False)
    matches: str | None = None  #: the row whose compute this one matches (equal-compute rows)

    def values(self, base: dict[str, Any]) -> dict[str, Any]:
        """The run options of this row: ``base`` (config and flags) with its plugins and changes."""
        return {**base, "plugins": list(self.plugins), **self.changes}


def parse_methods(methods: list[str]) -> list[tuple[str, ...]]:
    """``["sst,aod,msl", "finetune lwf"]`` -> ``[("sst", "aod", "msl"), ("finetune",), ("lwf",)]``;
    a method named twice, or fewer than two methods, is one sentence."""
    found = [tuple(p.strip() for p in token.split(",") if p.strip()) for text in methods for token in text.split()]
    found = [plugins for plugins in found if plugins]
    if len(found) < 2:
        raise UsageError("--methods needs at least two methods to compare, e.g. --methods \"sst,aod,msl\" finetune.")
    names = [row_name(p) for p in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--methods names {', '.join(twice)} twice; list every method once.")
    return found


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (one sentence for anything else)."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated whole numbers like 0,1,2, got {text!r}.") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds must list distinct seeds >= 0 like 0,1,2, got {text!r}.")
    return seeds


def row_name(plugins: tuple[str, ...]) -> str:
    """The row of a method: its plugins joined with ``_``."""
    return "_".join(plugins) or "plain"


def step_epochs(values: dict[str, Any]) -> list[int]:
    """The epochs every step of a run with ``values`` trains, summed over the phases its plugins plan."""
    pm = load_plugins(plugin_names(values))
    options = build_options({k: v for k, v in values.items() if k != "out"}, declared_options(pm),
                            dormant_options(plugin_names(values)))
    known = run_phases(pm)
    totals = []
    for step in range(1, options.steps + 1):
        planned = step + 1 if options.open_ended else options.steps
        totals.append(sum(options.epochs_for(phase) for phase in plan_phases(pm, step, planned, known)))
    return totals


def plan_rows(base: dict[str, Any], methods: list[tuple[str, ...]], equal_compute: bool = True,
              method_values: dict[str, dict[str, Any]] | None = None) -> list[Row]:
    """The rows: every method (with its ``method_values`` by row name), then per baseline that trains
    fewer epochs in its busiest step than the first method, its equal-compute row."""
    method_values = method_values or {}
    rows = [Row(row_name(p), p, dict(method_values.get(row_name(p), {}))) for p in methods]
    if not equal_compute:
        return rows
    first = rows[0]
    target = max(step_epochs(first.values(base)))
    out = list(rows)
    for row in rows[1:]:
        values = row.values(base)
        mine = max(step_epochs(values))
        if mine >= target or mine == 0:
            continue
        epochs = int(values.get("epochs", 1) or 1)
        scaled = math.ceil(epochs * target / mine)
        label = f"{row.name}_{scaled // epochs}x" if scaled % epochs == 0 else f"{row.name}_{scaled}ep"
        changes = {**row.changes, "epochs": scaled}
        phase_epochs = dict(values.get("phase_epochs") or {})
        if phase_epochs:
            changes["phase_epochs"] = {k: math.ceil(int(v) * target / mine) for k, v in phase_epochs.items()}
        tuned = method_values.get(label)
        out.append(Row(label, row.plugins, {**changes, **(tuned or {})}, matches=first.name))
    return out


def choose_rows(rows: list[Row], only: str | None) -> list[Row]:
    """The rows named by ``--rows`` (all when None), in plan order; an unknown name is one sentence."""
    if not only:
        return rows
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    known = [r.name for r in rows]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"--rows names {', '.join(unknown)}, not a row of this comparison; choose from "
                         f"{', '.join(known)}.")
    if rows[0].name not in wanted:
        raise UsageError(f"--rows must keep the first method's row {rows[0].name}: the others are paired with it.")
    return [r for r in rows if r.name in wanted]
