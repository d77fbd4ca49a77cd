"""Reliability: kills, bad files, full disks and bad numbers lose no work and give one sentence.

* a run killed (SIGKILL) mid-epoch, between writing a temp file and renaming it, and between
  phases resumes with ``--resume`` to exactly the results of an uninterrupted run;
* every plugin state a phase keeps (sst's schedule, aod's EMA/mutual teacher, prune's report)
  survives a resume from ``partial.pt``;
* torn metrics lines, truncated partial checkpoints and stale temp files are detected and dropped
  with a warning;
* a full disk during a checkpoint write is one sentence, keeps the previous checkpoint, leaves no
  temp file, and the run resumes;
* checkpoints for another architecture or class count are refused by every command that loads one;
* every flag of ``toolbox run`` and every config-file mistake exits 2 with one ``Error:`` line.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch
from cli_process import cli_flags, forked_cli, toolbox_cli
from run_compare import comparable, metric_lines
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.hookspecs import hookimpl
from toolbox.models import build_model
from toolbox.options import RunOptions
from toolbox.plugin_host.entry_points import available_plugins, instantiate, load_entry_point
from toolbox.run.directory import mark
from toolbox.run.start import resume_run, start_run
from toolbox.storage import atomic as tbio
from toolbox.storage import checkpoint as ckpt

runner = CliRunner()
KILL_RUN = {"plugins": "sst,aod,msl", "dataset": "synthetic", "arch": "cifar_resnet20", "steps": 3,
            "epochs": 3, "batch_size": 64, "device": "cpu", "threads": 1}

# ----------------------------------------------------------------------------- helpers


def leftovers(run_dir: Path) -> list[Path]:
    """Temp files and partial checkpoints left in a run directory."""
    return sorted(run_dir.rglob(f".*{tbio.TEMP_SUFFIX}")) + sorted(run_dir.rglob(ckpt.PARTIAL_NAME))


class Killed(Exception):
    """Stands for SIGKILL in in-process tests (the run is abandoned where it stands)."""


class KillAt:
    """A plugin that abandons the run after batch ``batch`` of epoch ``epoch`` (1-based) of a phase."""

    def __init__(self, step: int, phase: str, epoch: int, batch: int = 1) -> None:
        self.where = (step, phase, epoch, batch)

    @hookimpl
    def toolbox_batch_end(self, ctx: Any) -> None:
        """Raise :class:`Killed` at the chosen batch."""
        if (ctx.step, ctx.phase, ctx.epoch + 1, ctx.batch_index + 1) == self.where:
            raise Killed(str(self.where))


def run_with_kills(values: dict[str, Any], kills: list[tuple[int, str, int, int]]) -> dict[str, Any]:
    """Start a run, abandon it at each of ``kills`` in turn (resuming in between), finish it."""
    out = Path(values["out"])
    for number, where in enumerate(kills):
        killer = {"killer": KillAt(*where)}
        run = start_run(values, extra_plugins=killer) if number == 0 else resume_run(out, extra_plugins=killer)
        with pytest.raises(Killed):
            run.execute()
        assert ckpt.partial_checkpoint_path(out).is_file(), where
    return resume_run(out).execute()


# ----------------------------------------------------------------------------- kill and resume
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of :data:`KILL_RUN` (in-process: same machine, same thread count)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    start_run({**KILL_RUN, "out": str(out)}).execute()
    return out


def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(reference: Path, tmp_path: Path) -> None:
    """The console script killed for real: the first and the last process are fresh interpreters
    (``python -m toolbox.cli``), the kills between them forked copies of this one (the same process
    death, without an interpreter start each)."""
    out = tmp_path / "run"
    kills = [
        "batch:1:learn:2:2",              # mid-epoch: partial.pt after epoch 1 of the first phase
        "before-rename:partial.pt",       # during a checkpoint write: temp file written, not renamed
        "before-rename:step2_learn.pt",   # during a phase checkpoint write (partial.pt of that phase)
        "after-write:step2_sparsify.pt",  # between phases: checkpoint renamed, partial.pt not yet deleted
        "batch:3:learn:2:1",              # mid-epoch in an AOD phase with a teacher
    ]
    for number, event in enumerate(kills):
        if number == 0:
            done = toolbox_cli("run", *cli_flags(KILL_RUN), "--out", str(out), kill_at=event)
            assert done.returncode == -signal.SIGKILL, (event, done.stderr[-2000:])
        else:
            assert forked_cli("run", "--resume", str(out), kill_at=event) == -signal.SIGKILL, event
        if event.startswith("before-rename:"):  # the temp file is left; the next resume removes it
            assert list(out.rglob(f".{event.split(':')[1]}.*{tbio.TEMP_SUFFIX}")), event
    done = toolbox_cli("run", "--resume", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert comparable(json.loads((out / "results.json").read_text())) == \
        comparable(json.loads((reference / "results.json").read_text()))
    assert metric_lines(out) == metric_lines(reference)
    assert not leftovers(out)
    final, expected = (ckpt.load_checkpoint(ckpt.phase_checkpoint_path(d, 3, "learn"))["state_dict"]
                       for d in (out, reference))
    assert all(torch.equal(final[k], expected[k]) for k in expected)


#: Kill points chosen so that every phase (plain learn, sparsify, AOD learn with its teacher, the
#: run's last phase) is killed mid-epoch and in a checkpoint write, and every kind of kill (mid first
#: epoch, mid last epoch, temp file not yet renamed, file renamed but partial.pt not yet deleted) hits
#: a plain learn phase, a sparsify phase and an AOD phase: 15 kills instead of every kill at every
#: phase (21), with the same resume paths.
EVERY_KIND_OF_KILL = [
    "batch:1:learn:1:3", "batch:1:learn:3:4", "before-rename:step1_learn.pt", "after-write:step1_learn.pt",
    "batch:1:sparsify:3:4", "after-write:step1_sparsify.pt",
    "batch:2:learn:1:3", "batch:2:learn:3:4", "before-rename:step2_learn.pt",
    "batch:2:sparsify:1:3", "before-rename:step2_sparsify.pt",
    "batch:3:learn:3:4", "before-rename:step3_learn.pt", "after-write:step3_learn.pt",
    "before-rename:results.json",
]


@pytest.mark.slow
def test_sigkill_at_every_epoch_of_every_phase(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    for number, event in enumerate(EVERY_KIND_OF_KILL):
        args = ["run", "--resume", str(out)] if number else ["run", *cli_flags(KILL_RUN), "--out", str(out)]
        assert forked_cli(*args, kill_at=event) == -signal.SIGKILL, event
    assert forked_cli("run", "--resume", str(out)) == 0
    assert comparable(json.loads((out / "results.json").read_text())) == \
        comparable(json.loads((reference / "results.json").read_text()))
    assert metric_lines(out) == metric_lines(reference)
    assert not leftovers(out)


#: 20 images per class and step: 4 batches an epoch, enough for every kill point below (batch <= 3).
SMALL = {"dataset": "synthetic", "arch": "cifar_resnet20", "steps": 2, "epochs": 2, "batch_size": 64,
         "eval_batch_size": 256, "device": "cpu", "seed": 3, "per_class": 20}


@pytest.mark.parametrize("extra,kills", [
    # sst's schedule and selection (held after target_at), aod's EMA teacher
    ({"plugins": "sst,aod,msl", "teacher": "ema", "sparsity_target_at": "0.5"},
     [(1, "sparsify", 2, 2), (2, "learn", 2, 1)]),
    # aod's mutual peer and its optimizer; a selection ranked once; optimizer state kept across phases
    ({"plugins": "sst,aod", "teacher": "mutual", "sst_rerank": "once", "reset_optimizer": "false"},
     [(2, "learn", 2, 3)]),
    # a compact phase: the saved model is smaller than the one the phase starts from
    ({"plugins": "sst,prune", "compact_epochs": "2", "compact_latency_repeats": "0"},
     [(2, "compact", 2, 1)]),
], ids=["sst-ema", "mutual-once", "compact"])
def test_plugin_state_survives_a_resume_mid_phase(tmp_path: Path, extra: dict[str, Any],
                                                  kills: list[tuple[int, str, int, int]]) -> None:
    values = {**SMALL, **extra}
    expected = start_run({**values, "out": str(tmp_path / "full")}).execute()
    resumed = run_with_kills({**values, "out": str(tmp_path / "cut")}, kills)
    assert comparable(resumed) == comparable(expected)
    assert metric_lines(tmp_path / "cut") == metric_lines(tmp_path / "full")
    assert not leftovers(tmp_path / "cut")


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """An uninterrupted run of :data:`SMALL` without plugins: its directory and results."""
    out = tmp_path_factory.mktemp("small") / "run"
    return out, start_run({**SMALL, "out": str(out)}).execute()


def test_partial_checkpoint_holds_what_a_phase_needs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Killed):
        start_run({**SMALL, "steps": 1, "epochs": 3, "plugins": "sst", "out": str(out)},
                  extra_plugins={"killer": KillAt(1, "learn", 3)}).execute()
    data = ckpt.load_checkpoint(ckpt.partial_checkpoint_path(out))
    where = (data["step"], data["phase"], data["epochs_done"], data["epochs"], data["partial"])
    assert where == (1, "learn", 2, 3, True)
    assert data["optimizer"]["state"] and data["rng"]["cpu"].dtype == torch.uint8
    assert data["done"] == [] and data["global_batch"] == 2 * 4  # 200 images in batches of 64
    with pytest.raises(Killed):
        start_run({**SMALL, "steps": 2, "epochs": 3, "plugins": "sst", "out": str(tmp_path / "sparsify")},
                  extra_plugins={"killer": KillAt(1, "sparsify", 3)}).execute()
    data = ckpt.load_checkpoint(ckpt.partial_checkpoint_path(tmp_path / "sparsify"))
    state = data["plugins"]["sst"]
    assert state["done"] == 2 * 4 and len(state["s_history"]) == 2  # 200 images in batches of 64
    assert all(s.dtype == torch.bool for s in state["selection"])


# ----------------------------------------------------------------------------- damaged files
def test_truncated_partial_checkpoint_restarts_its_phase(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         small_reference: tuple[Path, dict[str, Any]]) -> None:
    out = tmp_path / "cut"
    with pytest.raises(Killed):
        start_run({**SMALL, "out": str(out)}, extra_plugins={"killer": KillAt(2, "learn", 2)}).execute()
    partial = ckpt.partial_checkpoint_path(out)
    partial.write_bytes(partial.read_bytes()[:4000])
    run = resume_run(out)
    assert "Ignoring the unfinished phase's checkpoint" in caplog.text and "truncated or corrupt" in caplog.text
    assert comparable(run.execute()) == comparable(small_reference[1])
    assert metric_lines(out) == metric_lines(small_reference[0])


def test_torn_metrics_line_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     small_reference: tuple[Path, dict[str, Any]]) -> None:
    out = tmp_path / "cut"
    with pytest.raises(Killed):
        start_run({**SMALL, "out": str(out)}, extra_plugins={"killer": KillAt(1, "learn", 2)}).execute()
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 1, "phase": "learn", "epoch": 2, "ce": 2.3')  # a kill during an append
    resume_run(out).execute()
    assert "Dropped 1 torn line(s)" in caplog.text
    assert metric_lines(out) == metric_lines(small_reference[0])


def test_stale_partial_of_a_finished_phase_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Killed):
        start_run({**SMALL, "out": str(out)}, extra_plugins={"killer": KillAt(2, "learn", 2)}).execute()
    partial = ckpt.partial_checkpoint_path(out)
    stale = partial.read_bytes()
    resume_run(out).execute()
    partial.write_bytes(stale)  # as if killed between the phase checkpoint and deleting partial.pt
    run = resume_run(out)
    assert run.partial is None and not partial.exists()


# ----------------------------------------------------------------------------- atomic writes, full disk
def fail_writes_to(name: str, monkeypatch: pytest.MonkeyPatch, spare: int = 0) -> None:
    """Make ``os.write`` raise ENOSPC (a full disk) for file ``name`` (or its temp files), after
    ``spare`` writes to it went through."""
    real = os.write
    count = [0]

    def write(fd: int, data: Any) -> int:
        target = Path(os.readlink(f"/proc/self/fd/{fd}")).name if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if target == name or target.startswith(f".{name}."):
            count[0] += 1
            if count[0] > spare:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a file descriptor's file")
def test_atomic_write_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    tbio.atomic_write_json(path, {"ok": 1})
    fail_writes_to("results.json", monkeypatch)
    with pytest.raises(tbio.WriteError, match=r"Could not write .*results.json \(No space left on device\); "
                                              "what was written before is intact"):
        tbio.atomic_write_json(path, {"ok": 2})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a file descriptor's file")
@pytest.mark.parametrize("victim,spare", [("step2_learn.pt", 0), ("partial.pt", 1), ("metrics.jsonl", 3)])
def test_full_disk_during_a_checkpoint_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, victim: str,
                                             spare: int, small_reference: tuple[Path, dict[str, Any]]) -> None:
    out = tmp_path / "run"
    flags = ["--dataset", "synthetic", "--steps", "2", "--epochs", "2", "--batch-size", "64", "--device", "cpu",
             "--eval-batch-size", "256", "--seed", "3", "--per-class", "20", "--out", str(out)]
    with monkeypatch.context() as patch:
        fail_writes_to(victim, patch, spare)  # the writes of step 1 go through, step 2's first one fails
        result = runner.invoke(app, ["run", *flags])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and victim in errors[0] and "No space left on device" in errors[0]
    assert not list(out.rglob(f".*{tbio.TEMP_SUFFIX}"))
    assert ckpt.load_checkpoint(ckpt.phase_checkpoint_path(out, 1, "learn"))["step"] == 1  # intact
    resumed = runner.invoke(app, ["run", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
    results = json.loads((out / "results.json").read_text())
    assert comparable(results) == comparable(small_reference[1])
    assert metric_lines(out) == metric_lines(small_reference[0])


def test_unwritable_run_directory_is_refused_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = runner.invoke(app, ["run", "--dataset", "synthetic", "--out", str(blocker / "run")])
    assert result.exit_code == 2, result.output
    assert "Cannot write the run directory" in result.output and "--out" in result.output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_run_directory_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = runner.invoke(app, ["run", "--dataset", "synthetic", "--out", str(locked / "run")])
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2 and "Cannot write the run directory" in result.output


def test_low_disk_space_is_a_warning_at_start(tiny_values: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    run = start_run({**tiny_values, "plugins": "sst"})
    monkeypatch.setattr("shutil.disk_usage", lambda _: SimpleNamespace(total=10_000, used=9_000, free=1_000))
    run.check_disk_space()
    assert "are free on the disk" in caplog.text and "checkpoints need about" in caplog.text


def test_a_killed_run_is_not_overwritten_by_a_new_one(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Killed):
        start_run({**SMALL, "out": str(out)}, extra_plugins={"killer": KillAt(1, "learn", 2)}).execute()
    message = one_error(runner.invoke(app, ["run", "--dataset", "synthetic", "--out", str(out)]))
    assert "already holds a run; pass --resume" in message


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    tbio.atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == tbio.FILE_MODE


# ----------------------------------------------------------------------------- safe loading
def fake_checkpoint(path: Path, arch: str = "cifar_resnet20", num_classes: int = 10) -> Path:
    """An untrained checkpoint of ``arch`` with ``num_classes`` classes (synthetic dataset)."""
    model = build_model(arch, num_classes, 3)
    data = ckpt.make_checkpoint(model, arch=arch, num_classes=num_classes, in_chans=3, model_kwargs={},
                                step=1, phase="learn", masks={}, records={},
                                options={"dataset": "synthetic"}, results=[])
    data["done"] = [[1, "learn"]]
    ckpt.save_checkpoint(path, data)
    return path


def one_error(result: Any, code: int = 2) -> str:
    """The single ``Error:`` line of a failed command (no traceback)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_every_loading_command_refuses_a_checkpoint_for_other_classes(tmp_path: Path) -> None:
    five = fake_checkpoint(tmp_path / "five.pt", num_classes=5)
    message = one_error(runner.invoke(app, ["train", "--init", str(five), "--dataset", "synthetic",
                                            "--out", str(tmp_path / "t")]))
    assert "cifar_resnet20 with 5 classes but this run uses cifar_resnet20 with 10 classes" in message
    message = one_error(runner.invoke(app, ["eval", str(five)]))
    assert "5 classes" in message and "synthetic has 10" in message


def test_resume_refuses_a_checkpoint_for_another_architecture(tmp_path: Path) -> None:
    out = tmp_path / "run"
    start_run({**SMALL, "steps": 1, "epochs": 1, "out": str(out)}).execute()
    fake_checkpoint(ckpt.phase_checkpoint_path(out, 1, "learn"), arch="cifar_resnet32")
    message = one_error(runner.invoke(app, ["run", "--resume", str(out)]))
    assert "is for cifar_resnet32 with 10 classes but this run uses cifar_resnet20 with 10 classes" in message


@pytest.mark.parametrize("command", [["eval"], ["prune", "--out", "{tmp}/small.pt"],
                                     ["train", "--dataset", "synthetic", "--out", "{tmp}/t", "--init"]])
def test_damaged_and_unsafe_checkpoints_are_refused_by_every_command(tmp_path: Path, command: list[str]) -> None:
    good = fake_checkpoint(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:3000])

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned > /tmp/toolbox-pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "payload": Exploit()}, evil)
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    assert "truncated or corrupt" in one_error(runner.invoke(app, [*args, str(truncated)]))
    assert "Refusing to load" in one_error(runner.invoke(app, [*args, str(evil)]))
    assert "does not exist" in one_error(runner.invoke(app, [*args, str(tmp_path / "missing.pt")]))


# ----------------------------------------------------------------------------- bad input sweep
CORE_CASES = [
    ("plugins", "nope", "Unknown plugin 'nope'"), ("plugins", "sst,sst", "listed twice"),
    ("arch", "resnet_9000", "Unknown --arch"), ("dataset", "imagenet22k", "imagenet22k"),
    ("data_root", "{tmp}/nodata", "--data-root"), ("steps", "0", "--steps"), ("steps", "-2", "--steps"),
    ("steps", "x", "--steps"), ("steps", "1.5", "--steps"), ("steps", "10000", "shards"),
    ("per_class", "0", "--per-class"), ("per_class", "x", "--per-class"), ("per_class", "100000", "per class"),
    ("val_per_class", "-1", "--val-per-class"), ("val_per_class", "x", "--val-per-class"),
    ("epochs", "0", "--epochs"), ("epochs", "-1", "--epochs"), ("epochs", "two", "--epochs"),
    ("phase_epochs", "x", "phase_epochs"), ("batch_size", "0", "--batch-size"), ("batch_size", "x", "--batch-size"),
    ("eval_batch_size", "-3", "--eval-batch-size"), ("lr", "0", "--lr"), ("lr", "-0.1", "--lr"),
    ("lr", "x", "--lr"), ("lr", "nan", "--lr"), ("lr", "inf", "--lr"), ("momentum", "1", "--momentum"),
    ("momentum", "-0.5", "--momentum"), ("momentum", "x", "--momentum"), ("weight_decay", "-1", "--weight-decay"),
    ("weight_decay", "nan", "--weight-decay"), ("schedule", "linear", "--schedule"),
    ("milestones", "x", "--milestones"), ("milestones", "0.5,2", "--milestones"), ("milestones", "nan", "--milestones"),
    ("lr_decay", "0", "--lr-decay"), ("lr_decay", "-1", "--lr-decay"), ("lr_decay", "inf", "--lr-decay"),
    ("warmup_epochs", "-1", "--warmup-epochs"), ("warmup_epochs", "1.5", "--warmup-epochs"),
    ("warmup_lr", "-1", "--warmup-lr"), ("warmup_lr", "x", "--warmup-lr"),
    ("reset_optimizer", "maybe", "--reset-optimizer"), ("seed", "-1", "Seeds must be >= 0"), ("seed", "x", "--seed"),
    ("seeds", "a,b", "--seeds"), ("seeds", "1,1", "--seeds"), ("seeds", "-1,2", "Seeds must be >= 0"),
    ("out", "{tmp}/file/run", "Cannot write the run directory"), ("device", "bogus", "--device"),
    ("device", "meta", "--device"), ("channels_last", "maybe", "--channels-last"),
    ("precision", "fp64", "--precision"), ("threads", "0", "--threads"), ("threads", "x", "--threads"),
    ("skip_nonfinite", "maybe", "--skip-nonfinite"), ("model_kwargs", "x", "model_kwargs"),
    ("compact_teacher", "maybe", "--compact-teacher"),
    ("train", "{tmp}", "--train applies to --dataset imagefolder only"), ("test", "{tmp}", "--test applies to"),
    ("image_size", "0", "--image-size must be at least 1"), ("image_size", "x", "--image-size"),
    ("channels", "2", "--channels must be 1"), ("mean", "x", "--mean"), ("mean", "nan", "--mean"),
    ("mean", "0.1,0.2", "--mean gives 2 values"), ("std", "0", "--std values must be positive"),
    ("skip_bad_images", "maybe", "--skip-bad-images"),
    ("shards", "{tmp}", "--shards needs --test DIR"), ("open_ended", "maybe", "--open-ended"),
    ("serve", "fast", "--serve"), ("promote", "top1>>1", "--promote"), ("val", "{tmp}", "--val DIR is for --shards"),
    ("split", "zipf", "--split 'zipf' is unknown"), ("models_from", "{tmp}/nomodule.py", "--models-from"), ("classes", "a,b", "--classes"), ("tensorboard", "maybe", "--tensorboard"),
    ("allow_overlap", "maybe", "--allow-overlap"),
]
if not torch.cuda.is_available():
    CORE_CASES.append(("device", "cuda", "no CUDA device"))

CONFIG_CASES = [
    ("c.yaml", "steps: [1\n", "is not valid YAML"),
    ("c.yaml", "- steps\n- 3\n", "must hold a mapping"),
    ("c.yaml", "42\n", "must hold a mapping"),
    ("c.yaml", "bogus_key: 1\n", "Unknown option 'bogus_key'"),
    ("c.yaml", "steps: abc\n", "--steps must be an integer"),
    ("c.yaml", "steps: [1, 2]\n", "--steps must be an integer"),
    ("c.yaml", "lr: {a: 1}\n", "--lr must be a number"),
    ("c.yaml", "lr: .nan\n", "--lr must be a finite number"),
    ("c.yaml", "plugins: 5\n", "Unknown plugin '5'"),
    ("c.yaml", "reset_optimizer: maybe\n", "--reset-optimizer"),
    ("c.yaml", "phase_epochs: {learn: x}\n", "phase_epochs.learn must be a whole number"),
    ("c.yaml", "phase_epochs: {learn: 1.5}\n", "phase_epochs.learn must be a whole number"),
    ("c.yaml", "phase_epochs: {bogus: 1}\n", "unknown phase 'bogus'"),
    ("c.yaml", "phase_epochs: 3\n", "phase_epochs must be a mapping"),
    ("c.yaml", "model_kwargs: [1]\n", "model_kwargs must be a mapping"),
    ("c.yaml", "model_kwargs: {bogus: 1}\n", "do not fit cifar_resnet20"),
    ("c.yaml", "model_kwargs: {shortcut: Z}\n", "do not fit cifar_resnet20"),
    ("c.yaml", "plugin: [1]\n", "The config key 'plugin' must map"),
    ("c.yaml", "plugins: sst\nratio: [0.5]\n", "--ratio must be a number"),
    ("c.yaml", "plugins: sst\nplugin: {ratio: 2}\n", "--ratio"),
    ("c.toml", "steps = \n", "is not valid TOML"),
    ("c.yaml", b"\xff\xfe\x00bad", "is not UTF-8"),
    ("folder.yaml", None, "Cannot read config file"),
]


def one_line_usage_error(args: list[str], fragment: str, out: Path) -> None:
    """``toolbox run ARGS`` exits 2 with one Error line holding ``fragment``, before any training."""
    message = one_error(runner.invoke(app, ["run", "--out", str(out), *args]))
    assert fragment in message, message
    assert not (out / "checkpoints").exists()


def test_the_sweep_covers_every_core_option() -> None:
    covered = {name for name, _, _ in CORE_CASES}
    assert {f.name for f in dataclasses.fields(RunOptions)} - {"plugin"} <= covered


@pytest.mark.parametrize("name,value,fragment", CORE_CASES, ids=[f"{n}={v}" for n, v, _ in CORE_CASES])
def test_bad_core_flag_exits_2_with_one_line(tmp_path: Path, name: str, value: str, fragment: str) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    value = value.replace("{tmp}", str(tmp_path))
    args = ["--dataset", "cifar100" if name == "data_root" else "synthetic", "--steps", "1", "--device", "cpu"]
    args += ["--" + name.replace("_", "-"), value]
    one_line_usage_error(args, fragment, tmp_path / "r")


def plugin_cases() -> Iterator[tuple[str, str, str]]:
    """(plugins, option, bad value) for every option of every built-in plugin: non-numbers, nan/inf,
    fractions for ints, unknown choices, and the values its own check refuses (negatives, out of range)."""
    needs = {"msl": "sst,msl"}
    seen: set[tuple[str, str]] = set()
    for name, info in available_plugins().items():
        if info.source != "built-in":
            continue
        plugin = instantiate(load_entry_point(name))
        declare = getattr(plugin, "toolbox_options", None)
        for opt in (declare() if callable(declare) else None) or []:
            bad = {float: ["abc", "nan", "inf"], int: ["abc", "1.5"], bool: ["maybe"]}.get(opt.type, [])
            bad += ["no-such-choice"] if opt.choices else []
            if opt.check is not None and opt.type in (int, float):
                bad += [raw for raw in ("-1", "0", "1", "2", "1000000") if opt.check(opt.type(raw))]
            for value in bad:
                if (opt.name, value) not in seen:
                    seen.add((opt.name, value))
                    yield needs.get(name, name), opt.name, value


PLUGIN_CASES = list(plugin_cases())


@pytest.mark.parametrize("plugins,name,value", PLUGIN_CASES, ids=[f"{p}:{n}={v}" for p, n, v in PLUGIN_CASES])
def test_bad_plugin_flag_exits_2_with_one_line(tmp_path: Path, plugins: str, name: str, value: str) -> None:
    args = ["--plugins", plugins, "--dataset", "synthetic", "--steps", "2", "--device", "cpu",
            "--" + name.replace("_", "-"), value]
    one_line_usage_error(args, "--" + name.replace("_", "-"), tmp_path / "r")


@pytest.mark.parametrize("filename,text,fragment", CONFIG_CASES, ids=[f"{f}:{t!r}"[:40] for f, t, _ in CONFIG_CASES])
def test_bad_config_file_exits_2_with_one_line(tmp_path: Path, filename: str, text: Any, fragment: str) -> None:
    config = tmp_path / filename
    if text is None:
        config.mkdir()
    elif isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    one_line_usage_error(["--config", str(config), "--dataset", "synthetic", "--device", "cpu"], fragment,
                         tmp_path / "r")


@pytest.mark.parametrize("content,fragment", [
    (None, "has no config.yaml"), ("steps: [1\n", "is not readable YAML"),
    ("- 1\n- 2\n", "does not hold a mapping"), ("bogus_key: 1\n", "Unknown option 'bogus_key'"),
])
def test_damaged_run_directory_is_one_sentence(tmp_path: Path, content: str | None, fragment: str) -> None:
    tmp_path.joinpath("run").mkdir()
    mark(tmp_path / "run")  # the toolbox's run directory, damaged
    if content is not None:
        (tmp_path / "run" / "config.yaml").write_text(content)
    assert fragment in one_error(runner.invoke(app, ["run", "--resume", str(tmp_path / "run")]))


def test_a_flag_without_its_value_is_one_line_from_the_console_script() -> None:
    done = toolbox_cli("run", "--steps")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["Error: Option '--steps' requires an argument; see toolbox --help."]
