"""Equal tuning (``toolbox compare --trials N``): one ``toolbox tune`` study per row, same budget.

Each row's study searches the space its plugins declare (``search_space`` on the plugin class, see
:func:`toolbox.tune.search_space.declared_space`) unless the user's ``--space FILE`` gives that row
one (a mapping of row name to a space). Trials train on the config's validation split
(``val_per_class``; the test set is never read) with the first seed; the row's own values are the
first trial, so a tuned row never scores below its defaults on validation. The study lives in
``DIR/tune/<row>/`` and its chosen values in ``DIR/tune/<row>.json``: a rerun reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from toolbox.compare.plan import Row
from toolbox.errors import UsageError
from toolbox.options import build_options, plugin_names
from toolbox.plugin_host.calls import declared_options
from toolbox.plugin_host.manager import dormant_options, load_plugins
from toolbox.storage.atomic import atomic_write_json, atomic_write_text
from toolbox.tune import study as tune
from toolbox.tune.report import best_trial
from toolbox.tune.search_space import declared_space


def row_space(row: Row, values: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    """The space ``row`` is tuned in: the user's for it, else what its plugins declare."""
    if user and row.name in user:
        return dict(user[row.name])
    pm = load_plugins(plugin_names(values))
    space = declared_space([plugin for _, plugin in pm.list_name_plugin()])
    if not space:
        raise UsageError(f"No plugin of row {row.name} declares a search space; give it one in --space FILE "
                         f"(e.g. '{row.name}: {{lr: {{low: 0.01, high: 0.2, log: true}}}}').")
    return space


def read_user_space(path: Path | None) -> dict[str, Any] | None:
    """``--space FILE``: a mapping from row names to search spaces (None without a file)."""
    if path is None:
        return None
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UsageError(f"Cannot read the search spaces {path} as YAML; check the path and its syntax.") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise UsageError(f"{path} must map row names to search spaces, e.g. 'finetune: {{lr: {{low: 0.01, high: 0.2}}}}'.")
    return raw


def defaults(values: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The row's own values of the searched options that lie in the space: the first trial.

    ``values`` may hold flags as the command line gave them (``lr: '0.05'``): they are read as the
    run reads them (typed, with plugin defaults) before they are checked against the space."""
    names = plugin_names(values)
    options = build_options({k: v for k, v in values.items() if k != "out"},
                            declared_options(load_plugins(names)), dormant_options(names))
    chosen = {}
    for name, spec in space.items():
        value = options.plugin[name] if name in options.plugin else getattr(options, name, None)
        inside = value in spec if isinstance(spec, list) else (
            isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"])
        if inside:
            chosen[name] = value
    return chosen


def tune_row(out: Path, row: Row, values: dict[str, Any], trials: int, user: dict[str, Any] | None,
             threads: int | None = None) -> dict[str, Any]:
    """Run (or continue) ``row``'s study to ``trials`` finished trials; return its chosen values
    (with the study's ``val_per_class``), kept in ``DIR/tune/<row>.json``."""
    record = Path(out) / "tune" / f"{row.name}.json"
    if record.is_file():
        kept = json.loads(record.read_text())
        if kept.get("budget") == trials:
            return kept["values"]
    if not values.get("val_per_class"):
        raise UsageError("--trials tunes on validation data: set val_per_class in the config (e.g. "
                         "val_per_class: 10) or pass --val-per-class K.")
    space = row_space(row, values, user)
    study_dir = Path(out) / "tune" / row.name
    space_file = Path(out) / "tune" / f"{row.name}.space.yaml"
    space_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(space_file, yaml.safe_dump(space, sort_keys=False))
    spec = tune.make_spec({k: v for k, v in values.items() if k != "out"}, space_file, "mean")
    study, spec = tune.open_study(study_dir, spec, name=row.name)
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(defaults(values, space))
    tune.work(study, spec, study_dir, tune.WorkerOptions(trials=trials, pruner="median", heartbeat=60,
                                                         threads=threads))
    best = best_trial(study)
    if best is None:
        raise UsageError(f"No trial of {row.name}'s study completed; see the run directories in {study_dir}/trials.")
    chosen = {**best.params, "val_per_class": values["val_per_class"]}
    atomic_write_json(record, {"row": row.name, "budget": trials, "space": space, "values": chosen,
                               "validation": best.value})
    return chosen
