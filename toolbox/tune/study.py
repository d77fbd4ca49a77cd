"""``toolbox tune``: hyper-parameter search on the validation split with Optuna.

A study is a folder ``STUDY/`` holding ``tune.yaml`` (where the study's storage is),
``study.db`` (the default SQLite storage) and ``trials/NNNN/``: every trial is an ordinary run
directory (``toolbox run --resume STUDY/trials/NNNN`` continues one). What every trial shares,
the run config, the search space and the objective (:class:`StudySpec`), is stored in the study
itself, so a worker on another machine needs only ``--storage`` and ``--study-name``.

Trials score the validation top-1 (``--val-per-class`` images per class held out of the training
data), averaged over the steps (``mean``) or at the last step (``last``); every step's value is
reported to Optuna as it comes, so the pruner can stop a weak trial after any step (its run
directory holds the checkpoints of the steps it finished). All trials use the config's seed: the
same shards, initialization and batch order, a paired comparison of the hyper-parameters alone.

Any number of workers share a study (:func:`work`): each one loops "start a trial while fewer
than ``--trials`` are finished or running"; a trial whose worker was killed stops sending
heartbeats and is marked FAIL after two intervals, and another trial takes its place.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import socket
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from toolbox.errors import UsageError
from toolbox.options import build_options, normalize_key, option_types, plugin_names
from toolbox.plugin_host.calls import declared_options
from toolbox.plugin_host.manager import dormant_options, load_plugins
from toolbox.run.engine import NumericError
from toolbox.run.run import Run
from toolbox.run.start import start_run
from toolbox.storage import atomic as io
from toolbox.tune.search_space import Param, load_space, parse_space
from toolbox.tune.storage import (
    absolute_url,
    default_storage_url,
    hide_password,
    open_storage,
    opened_url,
    recorded_url,
)

STUDY_FILE = "tune.yaml"
SPEC_ATTR = "toolbox_tune"
TRIALS_ATTR = "toolbox_trials"
DEFAULT_TRIALS = 20
TRIALS_DIR = "trials"
OBJECTIVES = ("mean", "last")
PRUNERS = ("median", "hyperband", "none", "threshold:VALUE")
MACHINE_KEYS = {"data_root", "device", "threads", "out", "eval_batch_size"}  # may differ between workers
MAX_FAILURES = 3  # consecutive failed trials after which a worker stops
POLL_SECONDS = 2.0
log = logging.getLogger("toolbox")


@dataclass
class StudySpec:
    """What every trial of a study shares: the run config, the raw search space and the objective."""

    config: dict[str, Any]
    space: dict[str, Any]
    objective: str = "mean"

    def params(self) -> list[Param]:
        """The searched options, parsed against the options of the config's plugins."""
        return parse_space(self.space, option_types(_declared(self.config)), "the study's search space")


@dataclass
class WorkerOptions:
    """How one worker process runs trials (may differ between workers of one study)."""

    trials: int = DEFAULT_TRIALS
    pruner: str = "median"
    heartbeat: int = 60
    threads: int | None = None


# ----------------------------------------------------------------------------- the spec
def make_spec(values: dict[str, Any], space_path: Path, objective: str = "mean") -> StudySpec:
    """Check a run config (merged file and flags) and a search-space file; one sentence per mistake."""
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    config = {normalize_key(k): v for k, v in values.items() if v is not None}
    if config.get("seeds"):
        raise UsageError("tune runs every trial with the config's seed (a paired comparison); remove seeds.")
    config.pop("seeds", None)
    if "out" in config:
        log.warning("Ignoring out=%s: every trial's run directory is STUDY/trials/NNNN.", config.pop("out"))
    declared = _declared(config)
    options = build_options(copy.deepcopy(config), declared, dormant_options(plugin_names(config)))
    if not options.val_per_class:
        raise UsageError("tune scores trials on validation data, so the run needs --val-per-class K "
                         "(K training images per class held out, e.g. 10).")
    raw, params = load_space(space_path, option_types(declared))
    _check_extremes(config, params, declared)
    try:
        json.dumps(config)
        json.dumps(raw)
    except (TypeError, ValueError):
        raise UsageError("The config or search space holds a value that is not plain text, a number, a list "
                         "or a mapping (a date?); quote it.") from None
    return StudySpec(config=config, space=raw, objective=objective)


def _declared(config: dict[str, Any]) -> dict[str, Any]:
    """The options the config's plugins declare."""
    return declared_options(load_plugins(plugin_names(config)))


def _check_extremes(config: dict[str, Any], params: list[Param], declared: dict[str, Any]) -> None:
    """Refuse a space whose bounds or choices a run would refuse (before any trial trains)."""
    dormant = dormant_options(plugin_names(config))
    with _quiet():
        for param in params:
            for value in param.extremes():
                try:
                    build_options(with_params(config, {param.name: value}), declared, dormant)
                except UsageError as exc:
                    raise UsageError(f"The search space lets {param.name} reach {value!r}, which a run "
                                     f"refuses: {exc}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the toolbox logger's warnings (repeated option checks would repeat them)."""
    logger = logging.getLogger("toolbox")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def with_params(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``params`` set (also where the config nests them under ``plugin:``)."""
    values = copy.deepcopy(config)
    nested = values.get("plugin")
    if isinstance(nested, dict):
        values["plugin"] = {k: v for k, v in nested.items() if normalize_key(str(k)) not in params}
    values.update(params)
    return values


# ----------------------------------------------------------------------------- the study
def study_location(study_dir: Path, storage: str | None = None, name: str | None = None) -> tuple[str, str]:
    """The storage URL and study name: given, else recorded in ``STUDY/tune.yaml`` (an SQLite file
    recorded relative to the folder is opened in ``study_dir``), else the defaults (SQLite in the
    folder, the folder's name)."""
    recorded = _read_location(study_dir)
    found = opened_url(str(recorded["storage"]), study_dir) if recorded.get("storage") else None
    url = absolute_url(storage) if storage else (found or default_storage_url(study_dir))
    study_name = name or recorded.get("study_name") or Path(study_dir).resolve().name
    if recorded and (found, recorded.get("study_name")) != (url, study_name):
        raise UsageError(f"{study_dir} belongs to study {recorded.get('study_name')!r} in "
                         f"{hide_password(str(found))}; pass the same --storage and "
                         "--study-name, or another --study folder.")
    return url, study_name


def _read_location(study_dir: Path) -> dict[str, Any]:
    path = Path(study_dir) / STUDY_FILE
    if not path.is_file():
        return {}
    try:
        recorded = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        recorded = None
    if not isinstance(recorded, dict):
        raise UsageError(f"{path} is damaged; restore it or delete it and pass --storage and --study-name.")
    return recorded


def open_study(study_dir: Path, spec: StudySpec | None = None, storage: str | None = None,
               name: str | None = None, heartbeat: int | None = None) -> tuple[optuna.Study, StudySpec]:
    """Create or join the study of ``study_dir``; without ``spec``, join one that exists and
    take its spec. A spec that differs from the study's (other config, space or objective) is refused."""
    study_dir = Path(study_dir)
    url, study_name = study_location(study_dir, storage, name)
    _prepare_folder(study_dir, may_create=spec is not None or storage is not None)
    backend = open_storage(url, heartbeat, _report_stale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            study = (optuna.load_study(study_name=study_name, storage=backend) if spec is None else
                     optuna.create_study(study_name=study_name, storage=backend, direction="maximize",
                                         load_if_exists=True))
        except KeyError:
            raise UsageError(f"No study {study_name!r} in {hide_password(url)}; start it with --config and "
                             "--space.") from None
    if spec is not None and SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, asdict(spec))
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        raise UsageError(f"Study {study_name!r} in {hide_password(url)} was not made by toolbox tune; pass "
                         "another --study-name.")
    if spec is not None:
        _check_same(spec, StudySpec(**stored), study_name)
    if not (study_dir / STUDY_FILE).is_file():
        io.atomic_write_text(study_dir / STUDY_FILE, yaml.safe_dump({"storage": recorded_url(url, study_dir),
                                                                    "study_name": study_name}))
    return study, spec or StudySpec(**stored)


def trial_cap(study: optuna.Study, given: int | None) -> int:
    """The number of finished trials to reach: ``given`` (recorded in the study for workers that
    join without --trials), else the recorded one, else :data:`DEFAULT_TRIALS`."""
    if given is None:
        return int(study.user_attrs.get(TRIALS_ATTR, DEFAULT_TRIALS))
    if study.user_attrs.get(TRIALS_ATTR) != given:
        study.set_user_attr(TRIALS_ATTR, given)
    return given


def _prepare_folder(study_dir: Path, may_create: bool) -> None:
    """Create the study folder (a new study, or a worker joining one with --storage); else it must
    hold a study already."""
    if not may_create:
        if not (study_dir / STUDY_FILE).is_file():
            raise UsageError(f"{study_dir} holds no study; start one with --config and --space (or join one "
                             "with --storage and --study-name).")
        return
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Cannot create the study folder {study_dir} ({exc.strerror}); pass a writable "
                         "--study.") from None


def _check_same(given: StudySpec, stored: StudySpec, name: str) -> None:
    """Refuse joining a study with another objective, space or (machine-independent) config."""
    if given.objective != stored.objective:
        raise UsageError(f"Study {name!r} maximizes the {stored.objective} validation top-1, not the "
                         f"{given.objective}; pass --objective {stored.objective} or another --study.")
    if given.space != stored.space:
        raise UsageError(f"Study {name!r} searches another space ({stored.space}); pass the same --space "
                         "or another --study.")
    keys = (set(given.config) | set(stored.config)) - MACHINE_KEYS
    for key in sorted(keys):
        if given.config.get(key) != stored.config.get(key):
            raise UsageError(f"Study {name!r} was started with {key}={stored.config.get(key)!r}, not "
                             f"{given.config.get(key)!r}; pass the same config or another --study.")


def _report_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Log a trial whose worker stopped sending heartbeats (Optuna has marked it FAIL)."""
    log.warning("Trial %d stopped sending heartbeats (its worker was killed or lost); marked FAIL. Its run "
                "directory %s is left as it was.", trial.number, trial.user_attrs.get("run_dir", "?"))


def make_pruner(name: str, steps: int) -> optuna.pruners.BasePruner:
    """``median`` (from the second step, after 3 finished trials), ``hyperband`` (resource: steps),
    ``none``, or ``threshold:VALUE`` (stop a trial whose validation top-1 falls below VALUE %)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)  # steps count from 1
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(steps, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name.startswith("threshold:"):
        try:
            return optuna.pruners.ThresholdPruner(lower=float(name.partition(":")[2]))
        except ValueError:
            pass
    raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}.")


# ----------------------------------------------------------------------------- one trial
def trial_dir(study_dir: Path, number: int) -> Path:
    """The run directory of trial ``number``."""
    return Path(study_dir) / TRIALS_DIR / f"{number:04d}"


def objective_value(per_step: dict[int, float], objective: str) -> float:
    """The mean of the steps' validation top-1, or the last step's."""
    if objective == "last":
        return per_step[max(per_step)]
    return sum(per_step.values()) / len(per_step)


class StepReporter:
    """The run's progress callback: after each step's last phase it reports the validation top-1
    to Optuna and, before the last step, stops the trial (:class:`optuna.TrialPruned`) when the
    pruner says so; the run directory then holds every finished step's checkpoint. A trial that
    trained every step completes: pruning it then would save nothing and lose its score."""

    def __init__(self, trial: optuna.Trial) -> None:
        """Report to ``trial``; :attr:`run` is set once the run exists."""
        self.trial = trial
        self.run: Run | None = None
        self.per_step: dict[int, float] = {}

    def __call__(self, event: str, **info: Any) -> None:
        """Receive a progress event of the run."""
        if event != "phase_end" or self.run is None:
            return
        step, record = int(info["step"]), info["record"]
        if info["phase"] != self.run.plan(step)[-1]:
            return
        value = float(record["val_top1"])
        self.per_step[step] = value
        self.trial.report(value, step)
        log.info("Trial %d step %d: validation top-1 %.2f%%.", self.trial.number, step, value)
        if step < self.run.options.steps and self.trial.should_prune():  # a finished run is never pruned
            raise optuna.TrialPruned(f"pruned after step {step} (validation top-1 {value:.2f}%)")


class TrialObjective:
    """Optuna's objective: one ordinary run per trial in ``STUDY/trials/NNNN``."""

    def __init__(self, spec: StudySpec, study_dir: Path, threads: int | None = None) -> None:
        """Trials of ``spec`` in ``study_dir``; ``threads`` overrides the config's."""
        self.spec = spec
        self.params = spec.params()
        self.study_dir = Path(study_dir)
        self.threads = threads

    def __call__(self, trial: optuna.Trial) -> float:
        """Train the trial's run and return its objective."""
        chosen = {param.name: param.suggest(trial) for param in self.params}
        run_dir = trial_dir(self.study_dir, trial.number)
        values = with_params(self.spec.config, chosen)
        values["out"] = str(run_dir)
        if self.threads:
            values["threads"] = self.threads
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        log.info("Trial %d: %s in %s.", trial.number,
                 ", ".join(f"{k}={v}" for k, v in chosen.items()) or "no parameters", run_dir)
        reporter = StepReporter(trial)
        run = start_run(values, reporter)
        reporter.run = run
        run.execute()
        return objective_value(reporter.per_step, self.spec.objective)


# ----------------------------------------------------------------------------- workers
def work(study: optuna.Study, spec: StudySpec, study_dir: Path, options: WorkerOptions) -> None:
    """Run trials until ``options.trials`` of the study are finished (COMPLETE or PRUNED, by any
    worker). A worker starts a trial only while finished plus running trials are fewer than that,
    else it waits for the running ones (a killed worker's trial is failed by its heartbeat and
    replaced). Stops after :data:`MAX_FAILURES` failed trials in a row (non-finite losses)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(constant_liar=True)
    study.pruner = make_pruner(options.pruner, int(spec.config.get("steps", 4)))
    objective = TrialObjective(spec, study_dir, options.threads)
    failures = 0
    waiting = False

    def count_failures(_: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal failures
        failures = failures + 1 if trial.state == TrialState.FAIL else 0

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        states = Counter(t.state for t in study.get_trials(deepcopy=False))
        finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        if finished >= options.trials:
            log.info("Study %r has %d finished trial(s) of %d; this worker is done.", study.study_name,
                     finished, options.trials)
            return
        if failures >= MAX_FAILURES:
            raise UsageError(f"The last {failures} trials of this worker failed (see the errors above); fix the "
                             "config or narrow the search space, then rerun.")
        if finished + states[TrialState.RUNNING] >= options.trials:
            if not waiting:
                log.info("Waiting for %d running trial(s) of other workers.", states[TrialState.RUNNING])
            waiting = True
            time.sleep(min(float(options.heartbeat), POLL_SECONDS))
            continue
        waiting = False
        study.optimize(objective, n_trials=1, catch=(NumericError,), callbacks=[count_failures],
                       gc_after_trial=True)


