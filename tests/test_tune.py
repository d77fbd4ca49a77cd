"""``toolbox tune``: the search space, a study end to end, pruning, shared studies, killed workers.

* every search-space mistake is one sentence naming the option;
* a small study on the synthetic set through the CLI: one ordinary run directory per trial, the
  validation top-1 of every step as Optuna's intermediate values, the objective their mean; a
  rerun continues (here: finds the study finished); ``--show`` writes a ``best.yaml`` that
  ``toolbox run --config`` accepts, and an importance plot;
* a pruned trial stops after a step and its run directory resumes with ``toolbox run --resume``;
* two worker processes share one study in SQLite (``--workers 2``) and in a PostgreSQL server the
  test starts itself (two separate commands, as on two machines): the trial cap holds over both;
* a worker killed mid-trial: the rerun marks its trial FAIL (heartbeat) and finishes the study,
  the other trials and their run directories untouched; the same heartbeat on the journal storage.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.errors import UsageError
from toolbox.options import PluginOption, option_types
from toolbox.run.start import resume_run
from toolbox.storage import checkpoint as ckpt
from toolbox.storage.atomic import KILL_ENV
from toolbox.tune.search_space import Param, parse_space
from toolbox.tune.storage import HeartbeatJournalStorage, open_storage
from toolbox.tune.study import StudySpec, objective_value, with_params

runner = CliRunner()
CONFIG = {"plugins": ["lwf"], "dataset": "synthetic", "steps": 2, "epochs": 1, "batch_size": 64, "per_class": 10,
          "val_per_class": 5, "device": "cpu", "threads": 1}
SPACE = {"lr": {"low": 0.01, "high": 0.1, "log": True}, "alpha": [0.5, 1.0]}
TYPES = option_types({"alpha": PluginOption("alpha", float, 1.0), "T": PluginOption("T", float, 4.0)})


def write_files(folder: Path, config: dict[str, Any] = CONFIG, space: dict[str, Any] = SPACE) -> list[str]:
    """The config and space files in ``folder``, as ``--config C --space S`` arguments."""
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    return ["--config", str(folder / "config.yaml"), "--space", str(folder / "space.yaml")]


def tune(*args: str) -> Any:
    """``toolbox tune ARGS`` in this process."""
    return runner.invoke(app, ["tune", *args])


def tune_process(*args: str, kill_at: str | None = None) -> subprocess.Popen[str]:
    """``toolbox tune ARGS`` as a separate worker process (SIGKILLed at ``kill_at``)."""
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.Popen([sys.executable, "-m", "toolbox.cli", "tune", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def sqlite(study: Path) -> str:
    return f"sqlite:///{study.resolve() / 'study.db'}"


def val_per_step(run_dir: Path) -> dict[int, float]:
    """Each step's validation top-1 (its last phase) from a run's results.json."""
    results = yaml.safe_load((run_dir / "results.json").read_text())
    return {s["step"]: s["phases"][-1]["val_top1"] for s in results["steps"]}


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# ----------------------------------------------------------------------------- the space
def test_space_ranges_and_choices() -> None:
    params = parse_space(
        {"alpha": {"low": 0.1, "high": 2.0, "log": True}, "warmup-epochs": {"low": 0, "high": 3},
         "lr": {"low": 0.01, "high": 0.2, "step": 0.01}, "T": [2.0, 4.0], "epochs": {"low": 1, "high": 4.0, "type": "int"},
         "schedule": {"choices": ["cosine", "constant"]}}, TYPES)
    assert params == [Param("alpha", "float", 0.1, 2.0, log=True), Param("warmup_epochs", "int", 0, 3),
                      Param("lr", "float", 0.01, 0.2, step=0.01), Param("T", "categorical", choices=(2.0, 4.0)),
                      Param("epochs", "int", 1, 4), Param("schedule", "categorical", choices=("cosine", "constant"))]
    trial = optuna.create_study().ask()
    values = {p.name: p.suggest(trial) for p in params}
    assert 0.1 <= values["alpha"] <= 2.0 and isinstance(values["warmup_epochs"], int)
    assert values["T"] in (2.0, 4.0) and values["schedule"] in ("cosine", "constant")


@pytest.mark.parametrize("space, fragment", [
    ({"alpah": [1.0]}, "unknown option 'alpah'"),
    ({"lr": {"low": 0.2, "high": 0.1}}, "low=0.2 >= high=0.1"),
    ({"lr": {"low": 0.1, "high": 0.1}}, "low=0.1 >= high=0.1"),
    ({"alpha": []}, "no choices"),
    ({"alpha": {"choices": []}}, "no choices"),
    ({"alpha": [1.0, 1.0]}, "twice"),
    ({"alpha": [[1.0]]}, "single numbers"),
    ({"alpha": 1.0}, "single value 1.0"),
    ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"lr": {"low": 0.01, "high": 0.1, "log": True, "step": 0.01}}, "both log and step"),
    ({"lr": {"low": 0.01, "hihg": 0.1}}, "unknown key(s) hihg"),
    ({"lr": {"low": "a", "high": 0.1}}, "without numeric low and high"),
    ({"epochs": {"low": 1.0, "high": 3.5}}, "takes whole numbers"),
    ({"epochs": {"low": 1.5, "high": 3.5, "type": "int"}}, "fractional bounds"),
    ({"schedule": {"low": 1, "high": 2}}, "takes str values"),
    ({"seed": [0, 1]}, "keeps fixed"),
    ({"milestones": [0.5]}, "list or mapping option"),
    ([1, 2], "must map option names"),
    ({}, "must map option names"),
])
def test_space_mistakes_are_one_sentence(space: Any, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_space(space, TYPES)
    message = str(caught.value)
    assert fragment in message and message.count("\n") == 0


def test_params_replace_nested_plugin_values_and_objectives() -> None:
    assert with_params({"plugin": {"alpha": 1.0, "T": 2.0}, "lr": 0.1}, {"alpha": 0.5}) == {
        "plugin": {"T": 2.0}, "lr": 0.1, "alpha": 0.5}
    assert objective_value({1: 50.0, 2: 70.0}, "mean") == 60.0
    assert objective_value({2: 70.0, 1: 50.0}, "last") == 70.0


@pytest.mark.parametrize("config, space, extra, fragment", [
    ({k: v for k, v in CONFIG.items() if k != "val_per_class"}, SPACE, [], "needs --val-per-class"),
    (CONFIG, {"ratio": [0.3]}, [], "unknown option 'ratio'"),
    (CONFIG, {"lr": {"low": -1.0, "high": 0.1}}, [], "lets lr reach -1.0, which a run refuses"),
    (CONFIG, SPACE, ["--objective", "best"], "--objective must be one of mean, last"),
    (CONFIG, SPACE, ["--pruner", "sometimes"], "--pruner must be one of"),
    (CONFIG, SPACE, ["--workers", "0"], "--workers must be at least 1"),
    (CONFIG, SPACE, ["--trials", "0"], "--trials must be at least 1"),
    (CONFIG, SPACE, ["--storage", "nosuchdb://host/db"], "Cannot open the study storage nosuchdb://host/db"),
    ({**CONFIG, "seeds": [0, 1]}, SPACE, [], "remove seeds"),
])
def test_bad_studies_are_refused_before_any_trial(tmp_path: Path, config: dict[str, Any], space: dict[str, Any],
                                                  extra: list[str], fragment: str) -> None:
    assert fragment in one_error(tune(*write_files(tmp_path, config, space), "--study", str(tmp_path / "s"), *extra))
    assert not (tmp_path / "s" / "trials").exists()


def test_a_study_folder_is_required_and_must_hold_a_study(tmp_path: Path) -> None:
    assert "Pass --study DIR" in one_error(tune("--trials", "2"))
    assert "holds no study" in one_error(tune("--study", str(tmp_path)))
    assert "holds no study" in one_error(tune("--show", str(tmp_path)))


# ----------------------------------------------------------------------------- a study end to end
def test_a_small_study_end_to_end(tmp_path: Path) -> None:
    study = tmp_path / "study"
    command = [*write_files(tmp_path), "--study", str(study), "--trials", "3", "--pruner", "none"]
    result = tune(*command)
    assert result.exit_code == 0, result.output
    assert result.output.count("COMPLETE") == 3
    found = load(sqlite(study), "study")
    trials = found.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for trial in trials:
        run_dir = study / "trials" / f"{trial.number:04d}"
        assert trial.user_attrs["run_dir"] == str(run_dir.resolve())
        per_step = val_per_step(run_dir)
        assert trial.intermediate_values == per_step and sorted(per_step) == [1, 2]
        assert trial.value == pytest.approx(sum(per_step.values()) / 2)
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["seed"] == 0 and config["plugin"]["alpha"] == trial.params["alpha"]
        assert config["lr"] == pytest.approx(trial.params["lr"])

    again = tune(*command)  # a rerun continues the study: here it is finished already
    assert again.exit_code == 0, again.output
    joined = tune("--study", str(study))  # a worker joining without --trials takes the study's cap
    assert joined.exit_code == 0, joined.output
    assert len(load(sqlite(study), "study").trials) == 3
    changed = tune(*write_files(tmp_path, space={"lr": [0.1]}), "--study", str(study))
    assert "searches another space" in one_error(changed)

    shown = tune("--show", str(study))
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("COMPLETE") == 3 and "best: trial" in shown.output
    assert (study / "importance.png").stat().st_size > 1000
    best = max(trials, key=lambda t: t.value)
    out = tmp_path / "best_run"
    ran = runner.invoke(app, ["run", "--config", str(study / "best.yaml"), "--steps", "1", "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["lr"] == pytest.approx(best.params["lr"]) and config["plugin"]["alpha"] == best.params["alpha"]
    assert config["val_per_class"] == 5 and config["plugins"] == ["lwf"]


def test_a_pruned_trial_stops_after_a_step_and_its_run_resumes(tmp_path: Path) -> None:
    study, journal = tmp_path / "study", tmp_path / "shared" / "journal.log"
    result = tune(*write_files(tmp_path), "--study", str(study), "--trials", "2", "--pruner", "threshold:101",
                  "--storage", f"journal:{journal}", "--objective", "last")
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="study", storage=open_storage(f"journal:{journal}")).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    run_dir = study / "trials" / "0000"
    assert list(trials[0].intermediate_values) == [1]
    assert (run_dir / "checkpoints" / "step1_learn.pt").is_file()
    assert not (run_dir / "checkpoints" / "step2_learn.pt").exists() and not ckpt.partial_checkpoint_path(run_dir).exists()
    resumed = runner.invoke(app, ["run", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    assert sorted(val_per_step(run_dir)) == [1, 2]
    shown = tune("--show", str(study))  # no complete trial: a table, no best.yaml, no plot
    assert shown.exit_code == 0 and shown.output.count("PRUNED") == 2
    assert not (study / "best.yaml").exists() and not (study / "importance.png").exists()


def test_a_trial_that_trained_every_step_completes_even_below_the_threshold(tmp_path: Path) -> None:
    study, journal = tmp_path / "study", tmp_path / "shared" / "journal.log"
    result = tune(*write_files(tmp_path), "--study", str(study), "--trials", "1", "--pruner", "threshold:101",
                  "--storage", f"journal:{journal}", "--steps", "1")
    assert result.exit_code == 0, result.output
    (trial,) = optuna.load_study(study_name="study", storage=open_storage(f"journal:{journal}")).get_trials()
    assert trial.state == TrialState.COMPLETE and list(trial.intermediate_values) == [1]


# ----------------------------------------------------------------------------- shared studies
@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    study = tmp_path / "study"
    config = {k: v for k, v in CONFIG.items() if k != "threads"}
    result = tune(*write_files(tmp_path, config), "--study", str(study), "--trials", "4", "--workers", "2",
                  "--pruner", "none")
    assert result.exit_code == 0, result.output
    trials = load(sqlite(study), "study").get_trials()
    # two workers that start a trial at the same instant may overshoot the cap by one (documented in the README)
    assert all(t.state == TrialState.COMPLETE for t in trials) and 4 <= len(trials) <= 5
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes trained trials
    for trial in trials:
        assert sorted(val_per_step(study / "trials" / f"{trial.number:04d}")) == [1, 2]
        assert yaml.safe_load((study / "trials" / f"{trial.number:04d}" / "config.yaml").read_text())["threads"] >= 1


def postgres_binaries() -> Path | None:
    """The bin folder of the newest Debian PostgreSQL server package, else of initdb on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own (unix socket in a temp folder), stopped at teardown; skips
    with the reason where the server binaries are missing or it cannot start."""
    binaries = postgres_binaries()
    if binaries is None or not (binaries / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="toolbox-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", 5432
    pg_ctl = [*as_user, str(binaries / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*pg_ctl, "-o", f"-k {folder} -p {port} -c listen_addresses=", "-l", str(folder / "log"),
                        "-w", "start"], check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {exc}")
    try:
        yield f"postgresql://postgres@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_share_one_postgresql_study(tmp_path: Path, postgres_url: str) -> None:
    files = write_files(tmp_path)
    shared = ["--storage", postgres_url, "--study-name", "shared", "--trials", "4", "--pruner", "none",
              "--heartbeat", "5"]
    workers = [tune_process(*files, "--study", str(tmp_path / name), *shared) for name in ("machine_a", "machine_b")]
    for worker in workers:
        code, output = finish(worker)
        assert code == 0, output[-3000:]
    trials = load(postgres_url, "shared").get_trials()
    # two workers that start a trial at the same instant may overshoot the cap by one (documented in the README)
    assert all(t.state == TrialState.COMPLETE for t in trials) and 4 <= len(trials) <= 5
    homes = {Path(t.user_attrs["run_dir"]).parent.parent.name for t in trials}
    assert homes == {"machine_a", "machine_b"}
    for trial in trials:
        assert trial.intermediate_values == val_per_step(Path(trial.user_attrs["run_dir"]))
    shown = tune("--show", str(tmp_path / "machine_a"))
    assert shown.exit_code == 0 and shown.output.count("COMPLETE") == len(trials)
    assert (tmp_path / "machine_a" / "best.yaml").is_file()


# ----------------------------------------------------------------------------- killed workers
@pytest.mark.slow
def test_a_worker_killed_mid_trial_fails_only_its_trial(tmp_path: Path) -> None:
    study = tmp_path / "study"
    command = [*write_files(tmp_path), "--study", str(study), "--pruner", "none", "--heartbeat", "1"]
    assert tune(*command, "--trials", "1").exit_code == 0
    before = folder_digest(study / "trials" / "0000")
    code, output = finish(tune_process(*command, "--trials", "3", kill_at="batch:1:learn:1:1"))
    assert code == -signal.SIGKILL, output[-3000:]
    assert load(sqlite(study), "study").trials[1].state == TrialState.RUNNING

    result = tune(*command, "--trials", "3")  # the same command again: the study continues
    assert result.exit_code == 0, result.output
    trials = load(sqlite(study), "study").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert folder_digest(study / "trials" / "0000") == before
    for number in (2, 3):
        assert sorted(val_per_step(study / "trials" / f"{number:04d}")) == [1, 2]
    killed = study / "trials" / "0001"
    assert not (killed / "checkpoints" / "step1_learn.pt").exists()
    resume_run(killed).execute()  # the killed trial's run directory is an ordinary, resumable run
    assert sorted(val_per_step(killed)) == [1, 2]


@pytest.mark.filterwarnings("ignore")  # Optuna warns that heartbeats are meant for optimize(); here we drive them
def test_the_journal_storage_fails_a_trial_whose_heartbeat_stopped(tmp_path: Path) -> None:
    storage = open_storage(f"journal:{tmp_path / 'journal.log'}", heartbeat=1)
    assert isinstance(storage, HeartbeatJournalStorage)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    alive, dead = study.ask(), study.ask()
    storage.record_heartbeat(alive._trial_id)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    storage.record_heartbeat(alive._trial_id)
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in optuna.load_study(study_name="s", storage=open_storage(
        f"journal:{tmp_path / 'journal.log'}")).get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL]


def test_the_median_pruner_waits_for_step_2_and_3_finished_trials() -> None:
    from toolbox.tune.study import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 4))
    for number in range(4):
        trial = study.ask()
        trial.report(10.0 if number == 3 else 90.0, 1)
        assert not trial.should_prune()  # step 1, or fewer than 3 finished trials
        trial.report(10.0 if number == 3 else 90.0, 2)
        assert trial.should_prune() == (number == 3)
        study.tell(trial, 90.0)


def test_storage_urls_in_messages_hide_passwords() -> None:
    from toolbox.tune.storage import absolute_url, hide_password, with_installed_driver

    assert "secret" not in hide_password("postgresql://me:secret@db.example/tune")
    assert hide_password("journal:/shared/study.log") == "journal:/shared/study.log"
    assert with_installed_driver("sqlite:///x.db") == "sqlite:///x.db"
    assert absolute_url("journal:x.log") == f"journal:{Path.cwd() / 'x.log'}"
    assert with_installed_driver("postgresql://me@h/db").endswith("://me@h/db")


def test_workers_split_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from toolbox.tune.workers import worker_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert [worker_env(i)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["2", "5", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert worker_env(1)["CUDA_VISIBLE_DEVICES"] == "3"


def test_a_study_spec_round_trips_through_the_storage(tmp_path: Path) -> None:
    from toolbox.tune.study import open_study

    spec = StudySpec(config=dict(CONFIG), space=SPACE, objective="last")
    study, _ = open_study(tmp_path / "s", spec)
    again, stored = open_study(tmp_path / "s")
    assert stored == spec and again.study_name == study.study_name == "s"
    assert yaml.safe_load((tmp_path / "s" / "tune.yaml").read_text())["storage"] == "sqlite:///study.db"
    assert "another --study folder" in str(pytest.raises(UsageError, open_study, tmp_path / "s", spec,
                                                         storage=f"journal:{tmp_path / 'j.log'}").value)


def test_a_copied_study_folder_is_a_study_of_its_own(tmp_path: Path) -> None:
    study, copy = tmp_path / "study", tmp_path / "copy"
    first = tune(*write_files(tmp_path), "--study", str(study), "--trials", "1", "--pruner", "none", "--steps", "1")
    assert first.exit_code == 0, first.output
    shutil.copytree(study, copy)
    more = tune("--study", str(copy), "--trials", "2")
    assert more.exit_code == 0, more.output
    assert len(load(sqlite(study), "study").trials) == 1  # the original is untouched
    trials = load(sqlite(copy), "study").trials
    assert len(trials) == 2 and trials[1].user_attrs["run_dir"] == str((copy / "trials" / "0001").resolve())
    assert not (study / "trials" / "0001").exists()


def test_an_explicit_storage_outside_the_folder_is_recorded_as_given(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from toolbox.tune.storage import opened_url, recorded_url
    from toolbox.tune.study import open_study

    monkeypatch.chdir(tmp_path)
    spec = StudySpec(config=dict(CONFIG), space=SPACE)
    open_study(tmp_path / "s", spec, storage="sqlite:///shared.db")  # relative to the working directory
    recorded = yaml.safe_load((tmp_path / "s" / "tune.yaml").read_text())["storage"]
    assert recorded == f"sqlite:///{tmp_path / 'shared.db'}"
    shutil.copytree(tmp_path / "s", tmp_path / "c")
    assert open_study(tmp_path / "c")[0].study_name == "s"  # the copy joins the shared database
    assert recorded_url("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"
    assert recorded_url(f"sqlite:///{tmp_path / 'a' / 'b.db'}?timeout=5", tmp_path / "a") == "sqlite:///b.db?timeout=5"
    assert opened_url("sqlite:///b.db?timeout=5", tmp_path / "x") == f"sqlite:///{tmp_path / 'x' / 'b.db'}?timeout=5"


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("space_*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_search_spaces_fit_the_cpu_preset(path: Path) -> None:
    from toolbox.options import load_config_file
    from toolbox.tune.study import make_spec

    preset = load_config_file(path.parent / "cpu_preset.yaml")
    spec = make_spec({**preset, "val_per_class": 10}, path)
    assert spec.params() and spec.config["val_per_class"] == 10
