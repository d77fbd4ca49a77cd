"""What ``toolbox tune --show STUDY`` gives: the trials table, ``best.yaml`` and ``importance.png``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from toolbox.storage import atomic as io
from toolbox.tune.study import StudySpec, with_params

BEST_FILE = "best.yaml"
IMPORTANCE_FILE = "importance.png"
log = logging.getLogger("toolbox")


def trials_table(study: optuna.Study, spec: StudySpec, study_dir: Path) -> Table:
    """One row per trial: state, objective, validation top-1 per step, parameters, time, run directory."""
    names = [str(name) for name in spec.space]
    table = Table(title=f"study {study.study_name}: {spec.objective} validation top-1 (%)")
    for column in ("#", "state", "value", "val top-1 by step", *names, "s", "run"):
        table.add_column(column, justify="left" if column in ("state", "run") else "right")
    for trial in study.get_trials(deepcopy=False):
        steps = " ".join(f"{trial.intermediate_values[s]:.2f}" for s in sorted(trial.intermediate_values))
        seconds = trial.duration.total_seconds() if trial.duration is not None else None
        table.add_row(str(trial.number), trial.state.name,
                      "-" if trial.value is None else f"{trial.value:.2f}", steps or "-",
                      *[_show(trial.params.get(name, "-")) for name in names],
                      "-" if seconds is None else f"{seconds:.1f}",
                      _relative(trial.user_attrs.get("run_dir"), study_dir))
    return table


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _relative(path: str | None, study_dir: Path) -> str:
    """``path`` relative to the study folder when inside it (another machine's folder stays absolute)."""
    if not path:
        return "-"
    run, home = Path(path), Path(study_dir).resolve()
    return str(run.relative_to(home)) if run.is_relative_to(home) else path


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The complete trial with the highest objective, or ``None`` when no trial is complete."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def write_best_config(study: optuna.Study, spec: StudySpec, study_dir: Path) -> Path | None:
    """``STUDY/best.yaml``: the run config with the best trial's parameters, for ``toolbox run --config``."""
    best = best_trial(study)
    if best is None:
        log.info("No complete trial yet, so no %s.", BEST_FILE)
        return None
    header = (f"# toolbox tune: trial {best.number} of study {study.study_name}, {spec.objective} validation "
              f"top-1 {best.value:.2f}%.\n# Run it with: toolbox run --config {BEST_FILE}\n")
    path = Path(study_dir) / BEST_FILE
    io.atomic_write_text(path, header + yaml.safe_dump(with_params(spec.config, best.params), sort_keys=False))
    return path


def write_importance_plot(study: optuna.Study, study_dir: Path) -> Path | None:
    """``STUDY/importance.png`` (Optuna's parameter importances) when Optuna can compute them: at
    least 2 complete trials and a parameter that varies among them; else ``None`` with a log line."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({name for trial in complete for name in trial.params})
    varying = [name for name in names if len({repr(t.params.get(name)) for t in complete}) > 1]
    if len(complete) < 2 or not varying:
        log.info("No importance plot: it needs 2 complete trials and a parameter that varies among them "
                 "(%d complete, %d varying).", len(complete), len(varying))
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(study_dir) / IMPORTANCE_FILE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = optuna.visualization.matplotlib.plot_param_importances(
            study, evaluator=_importance_evaluator(), params=varying)
        axes.set_title(f"Parameter importances of study {study.study_name} ({len(complete)} complete trials)",
                       fontsize=10)
        io.atomic_savefig(axes.figure, path, dpi=120, bbox_inches="tight")
        plt.close(axes.figure)
    except Exception as exc:  # noqa: BLE001 - importance estimates fail on degenerate studies
        log.info("No importance plot: Optuna could not compute importances (%s).", exc)
        return None
    return path


def _importance_evaluator() -> optuna.importance.BaseImportanceEvaluator:
    """fANOVA (Optuna's default) where scikit-learn is installed, else PED-ANOVA (numpy only)."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator()
    return optuna.importance.FanovaImportanceEvaluator()


def show_study(study_dir: Path, console: Any) -> None:
    """Print the trials table of the study in ``study_dir``; write best.yaml and importance.png there."""
    from toolbox.tune.study import open_study

    study, spec = open_study(Path(study_dir))
    console.print(trials_table(study, spec, study_dir))
    best = write_best_config(study, spec, study_dir)
    if best is not None:
        trial = best_trial(study)
        console.print(f"best: trial {trial.number} ({trial.value:.2f}%) {trial.params} -> {best}",
                      markup=False, highlight=False)
    plot = write_importance_plot(study, study_dir)
    if plot is not None:
        console.print(f"parameter importances: {plot}", markup=False, highlight=False)
