"""The accuracy benchmark's tuning stage: every row searched with ``toolbox tune``, same budget.

Each row gets one Optuna study on the primary protocol's validation split (``VAL_PER_CLASS``
training images per class held out before sharding; the test set is never read), seed 0, the
objective ``mean`` (validation top-1 averaged over the steps), the median pruner (a weak trial may
stop after any step from step 2 on) and the same number of trials (``TRIALS``). The first trial
of every study is the row's defaults, so a tuned row cannot score below its untuned self on
validation. The search spaces (``SPACES``) are the knobs each method exposes: the method's
distillation weight, ratio, MSL weight, temperature and teacher normalization; the learning rate
of fine-tuning, scratch and joint training; shrink-and-perturb's two factors; LwF's weight and
teacher normalization; EWC's penalty.

A finished study is summarized in ``<records>/tuning/<row>.json`` (chosen values, validation
score, every trial): that small file is what later stages read. The study's trials live in its
Optuna journal, ``<records>/tuning/<row>.journal`` (a small text file, committed as the study
goes), so a study killed with its checkout continues in a fresh one: its finished trials are
kept, the trial that was running is marked FAIL by the heartbeat check and replaced. The trials'
run directories (``<out>/tuning/<row>/trials/NNNN``) matter only while they train.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import TrialState

from toolbox.storage import atomic as tbio
from toolbox.tune import study as tune
from toolbox.tune.report import best_trial

TRIALS = 8
VAL_PER_CLASS = 200
TUNE_SEED = 0
HEARTBEAT = 60  #: seconds; a trial silent for twice this (its checkout was killed) is failed and replaced
LR = {"low": 0.01, "high": 0.2, "log": True}
WEIGHT = {"low": 0.25, "high": 4.0, "log": True}
TEACHER_BN = ["running", "batch"]
SPACES: dict[str, dict[str, Any]] = {
    "sst_aod_msl": {"alpha": WEIGHT, "ratio": [0.3, 0.5, 0.7], "msl_weight": WEIGHT, "T": [2.0, 4.0, 8.0],
                    "teacher_bn": TEACHER_BN},
    "finetune": {"lr": LR},
    "finetune_2x": {"lr": LR},
    "shrink_perturb_2x": {"sp_shrink": {"low": 0.2, "high": 1.0}, "sp_perturb": {"low": 0.01, "high": 0.3, "log": True}},
    "lwf": {"alpha": WEIGHT, "teacher_bn": TEACHER_BN},
    "ewc": {"ewc_lambda": {"low": 0.1, "high": 30.0, "log": True}},
    "scratch": {"lr": LR},
    "joint": {"lr": LR},
}


def record_path(records: Path, row: str) -> Path:
    """Where the summary of ``row``'s finished study is kept."""
    return records / "tuning" / f"{row}.json"


def journal_path(records: Path, row: str) -> Path:
    """The study's Optuna journal (a text file of its trials, committed while the study runs)."""
    return records / "tuning" / f"{row}.journal"


def read_tuned(records: Path, row: str) -> dict[str, Any] | None:
    """The summary of ``row``'s finished study, or None when it was not tuned yet."""
    path = record_path(records, row)
    return json.loads(path.read_text()) if path.is_file() else None


def tuned_values(records: Path, row: str) -> dict[str, Any]:
    """The run options ``row`` is tuned to: the chosen values plus the validation hold-out the
    study trained with (so the test runs train on exactly the study's data)."""
    summary = read_tuned(records, row)
    if summary is None:
        raise SystemExit(f"{row} has no tuning record in {record_path(records, row)}: run --protocol tune first.")
    return {**summary["params"], "val_per_class": summary["val_per_class"]}


def defaults(config: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The row's own values of the searched options (config, else the option's default) that
    lie in the space: the study's first trial."""
    from toolbox.options import RunOptions, plugin_names
    from toolbox.plugin_host.calls import declared_options
    from toolbox.plugin_host.manager import load_plugins

    declared = declared_options(load_plugins(plugin_names(config)))
    chosen = {}
    for name, spec in space.items():
        if name in config:
            value = config[name]
        elif name in declared:
            value = declared[name].default
        else:
            value = getattr(RunOptions(), name)
        inside = value in spec if isinstance(spec, list) else spec["low"] <= value <= spec["high"]
        if inside:
            chosen[name] = value
    return chosen


def tune_row(row: str, config: dict[str, Any], out: Path, records: Path, trials: int = TRIALS,
             threads: int | None = None) -> dict[str, Any]:
    """Run (or continue) ``row``'s study until ``trials`` trials finished and write its summary
    record; return the summary (at once when the record of that budget exists)."""
    done = read_tuned(records, row)
    if done is not None and done["budget"] == trials:
        return done
    space = SPACES[row]
    values = {**config, "val_per_class": config.get("val_per_class") or VAL_PER_CLASS, "seed": TUNE_SEED}
    space_file = out / "tuning" / f"{row}.space.yaml"
    space_file.parent.mkdir(parents=True, exist_ok=True)
    tbio.atomic_write_text(space_file, yaml.safe_dump(space, sort_keys=False))
    study_dir = out / "tuning" / row
    spec = tune.make_spec(values, space_file, "mean")
    journal = journal_path(records, row)
    journal.parent.mkdir(parents=True, exist_ok=True)
    study, spec = tune.open_study(study_dir, spec, storage=f"journal:{journal.resolve()}", name=row,
                                  heartbeat=HEARTBEAT)  # without it a killed checkout's running trial never ends
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(defaults(values, space))
    tune.work(study, spec, study_dir, tune.WorkerOptions(trials=trials, pruner="median", heartbeat=HEARTBEAT,
                                                         threads=threads))
    summary = summarize_study(row, study, values, space, trials)
    tbio.atomic_write_json(record_path(records, row), summary)
    return summary


def summarize_study(row: str, study: Any, values: dict[str, Any], space: dict[str, Any], trials: int) -> dict[str, Any]:
    """The record of a finished study: budget, space, chosen values, their validation score
    (the objective and per step) and every trial's state, values and score."""
    best = best_trial(study)
    if best is None:
        raise SystemExit(f"{row}: no trial of the study completed; see its run directories.")
    listed = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
               "per_step": {str(k): v for k, v in t.intermediate_values.items()}}
              for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    default = listed[0] if listed and listed[0]["number"] == 0 else None
    return {"row": row, "budget": trials, "space": space, "val_per_class": values["val_per_class"],
            "seed": values["seed"], "objective": "mean validation top-1 over the steps",
            "params": best.params, "value": best.value,
            "per_step": {str(k): v for k, v in best.intermediate_values.items()},
            "default_value": default["value"] if default else None, "trials": listed}


def tuning_markdown(records: Path, rows: list[str]) -> str:
    """One line per tuned row: trials finished (pruned), chosen values, their validation top-1 per
    step and averaged (the objective), and the defaults' average (trial 0)."""
    lines = ["| row | trials (pruned) | chosen values | chosen: val top-1 per step | mean over steps | defaults' mean |",
             "|---|---:|---|---|---:|---:|"]
    for row in rows:
        summary = read_tuned(records, row)
        if summary is None:
            continue
        pruned = sum(t["state"] == "PRUNED" for t in summary["trials"])
        chosen = ", ".join(f"{k}={_short(v)}" for k, v in summary["params"].items()) or "-"
        default = summary.get("default_value")
        steps = " / ".join(f"{summary['per_step'][k]:.2f}" for k in sorted(summary["per_step"], key=int))
        lines.append(f"| {row} | {len(summary['trials'])} ({pruned}) | {chosen} | {steps} | {summary['value']:.2f} | "
                     f"{'-' if default is None else f'{default:.2f}'} |")
    return "\n".join(lines)


def _short(value: Any) -> str:
    """A chosen value for a table cell (floats to 3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
