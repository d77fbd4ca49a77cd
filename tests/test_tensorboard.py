"""TensorBoard events in RUN_DIR/tb/ and the log file RUN_DIR/run.log, read back after real runs.

* the x axis (global epoch), the purge step of a resumed run and the hparams values on tiny inputs;
* a tiny sst,aod,msl run through the CLI: every scalar tag at the expected steps, BN |gamma|
  histograms of the sparsify phase, the hparams summary; run.log holds the log and epoch lines;
* ``--tensorboard false`` writes no tb/;
* a run killed three times and resumed has, per tag, the steps and values of an uninterrupted
  run and no step twice, although the killed processes had written some points twice.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2
from cli_process import cli_flags, forked_cli, toolbox_cli
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.run.start import resume_run, start_run
from toolbox.run.tensorboard import TB_DIR, RunBoard, hparam_values, phase_offsets

runner = CliRunner()
RUN = {"plugins": "sst,aod,msl", "dataset": "synthetic", "arch": "cifar_resnet20", "steps": 2, "epochs": 2,
       "batch_size": 64, "eval_batch_size": 256, "device": "cpu", "threads": 1, "seed": 0}
# step 1: learn (global epochs 1-2), sparsify (3-4); step 2: learn (5-6); hparams at 7
EPOCH_STEPS = [1, 2, 3, 4, 5, 6]
TRAIN_TAGS = ("epoch/ce", "epoch/loss", "epoch/lr", "epoch/images_per_second", "epoch/train_top1")
DETERMINISTIC = ("epoch/ce", "epoch/loss", "epoch/lr", "epoch/train_top1", "learn/test_top1", "learn/test_top5",
                 "sparsify/test_top1", "sparsify/sparsity", "learn/params", "hparams/final_top1")


def read_board(run_dir: Path) -> EventAccumulator:
    """Every event of RUN_DIR/tb, as TensorBoard loads them (points after a purge step dropped)."""
    board = EventAccumulator(str(run_dir / TB_DIR), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    board.Reload()
    return board


def scalars(board: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar tag."""
    return {tag: [(e.step, e.value) for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]}


def raw_scalar_points(run_dir: Path) -> Counter[tuple[str, int]]:
    """How often each (tag, step) was written to the event files, before TensorBoard's purge."""
    counts: Counter[tuple[str, int]] = Counter()
    for path in sorted((run_dir / TB_DIR).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                counts[(value.tag, event.step)] += 1
    return counts


# ----------------------------------------------------------------------------- tiny inputs
def test_global_epochs_follow_the_phase_order() -> None:
    order = [(1, "learn"), (1, "sparsify"), (1, "compact"), (2, "learn")]
    offsets, total = phase_offsets(order, {"learn": 2, "sparsify": 3, "compact": 0}.__getitem__)
    # a phase without epochs still takes one step, so its test accuracy has a point of its own
    assert offsets == {(1, "learn"): 0, (1, "sparsify"): 2, (1, "compact"): 5, (2, "learn"): 6}
    assert total == 8


def test_hparam_values_are_flat_and_typed() -> None:
    values = hparam_values({"arch": "cifar_resnet20", "lr": 0.1, "steps": 4, "reset_optimizer": True,
                            "plugins": ["sst", "aod"], "model_kwargs": {"shortcut": "B"}, "threads": None,
                            "out": "runs/x", "plugin": {"ratio": 0.5, "teacher": "ema"}})
    assert values == {"arch": "cifar_resnet20", "lr": 0.1, "steps": 4, "reset_optimizer": True,
                      "plugins": "sst,aod", "model_kwargs.shortcut": "B", "threads": "None",
                      "ratio": 0.5, "teacher": "ema"}


@pytest.mark.parametrize("done,partial,purge", [
    (set(), None, 1),                                                          # a fresh run
    ({(1, "learn")}, None, 3),                                                 # after a complete phase
    ({(1, "learn")}, {"step": 1, "phase": "sparsify", "epochs_done": 2}, 5),   # from partial.pt
    ({(1, "learn")}, {"step": 2, "phase": "learn", "epochs_done": 1}, 3),      # a stale partial.pt
    ({(1, "learn"), (1, "sparsify"), (2, "learn")}, None, 9),                  # done: the hparams point
])
def test_purge_step_is_the_first_point_still_to_write(tmp_path: Path, done: set[tuple[int, str]],
                                                      partial: dict[str, Any] | None, purge: int) -> None:
    order = [(1, "learn"), (1, "sparsify"), (2, "learn")]
    RunBoard.open(tmp_path, order, {"learn": 2, "sparsify": 4}.__getitem__, done, partial).close()
    (events,) = (tmp_path / TB_DIR).glob("events.out.tfevents.*")
    starts = [e.step for e in EventFileLoader(str(events)).Load() if e.HasField("session_log")]
    assert starts == [purge]


# ----------------------------------------------------------------------------- a run through the CLI
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sst,aod,msl run with a validation set, through ``toolbox run``."""
    out = tmp_path_factory.mktemp("tb") / "run"
    result = runner.invoke(app, ["run", *cli_flags({**RUN, "val_per_class": 5}), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_run_writes_every_scalar_at_its_global_epoch(cli_run: Path) -> None:
    points = scalars(read_board(cli_run))
    for tag in TRAIN_TAGS:
        assert [step for step, _ in points[tag]] == EPOCH_STEPS, tag
    assert [step for step, _ in points["epoch/sst_s"]] == [3, 4]  # a plugin's loss term, in its phase only
    for name in ("test_top1", "test_top5", "test_loss", "val_top1", "val_top5", "params", "macs", "train_seconds"):
        assert [step for step, _ in points[f"learn/{name}"]] == [2, 6], name
        assert [step for step, _ in points[f"sparsify/{name}"]] == [4], name
    assert points["sparsify/sparsity"] == [(4, pytest.approx(0.5, abs=0.02))]
    assert "learn/sparsity" not in points
    for name in ("final_top1", "final_top5", "mean_top1", "final_params", "final_macs", "train_seconds"):
        assert [step for step, _ in points[f"hparams/{name}"]] == [7], name
    assert "hparams/final_sparsity" not in points  # msl: the last step only learns


def test_scalars_match_the_results(cli_run: Path) -> None:
    import json

    results = json.loads((cli_run / "results.json").read_text())
    points = scalars(read_board(cli_run))
    learn = [phase for step in results["steps"] for phase in step["phases"] if phase["phase"] == "learn"]
    assert [value for _, value in points["learn/test_top1"]] == pytest.approx([p["top1"] for p in learn])
    assert [value for _, value in points["learn/val_top5"]] == pytest.approx([p["val_top5"] for p in learn])
    assert points["hparams/final_top1"][0][1] == pytest.approx(results["steps"][-1]["top1"])
    assert points["hparams/final_params"][0][1] == results["steps"][-1]["params"]
    epochs = [json.loads(line) for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in epochs if "epoch" in line]
    assert [value for _, value in points["epoch/loss"]] == pytest.approx(losses)


def test_sparsify_phases_have_bn_gamma_histograms(cli_run: Path) -> None:
    board = read_board(cli_run)
    tags = board.Tags()["histograms"]
    assert {"bn_gamma/all", "bn_gamma/bn1", "bn_gamma/layer3.2.bn2"} <= set(tags)
    assert len(tags) == 1 + 19 + 2  # all, 19 conv BNs and the two projection-shortcut BNs of ResNet-20 (B)
    (histogram,) = board.Histograms("bn_gamma/all")
    assert histogram.step == 4 and histogram.histogram_value.min >= 0.0
    assert histogram.histogram_value.num == 16 * 7 + 32 * 6 + 64 * 6 + 32 + 64  # every BN channel


def test_hparams_summary_holds_the_options(cli_run: Path) -> None:
    board = read_board(cli_run)
    content = board.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.hparams["arch"].string_value == "cifar_resnet20"
    assert info.hparams["lr"].number_value == pytest.approx(0.1)
    assert info.hparams["plugins"].string_value == "sst,aod,msl"
    assert info.hparams["teacher"].string_value  # a plugin option, by its own name
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        board.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"hparams/final_top1", "hparams/mean_top1"}


def test_run_log_holds_the_log_lines(cli_run: Path) -> None:
    text = (cli_run / "run.log").read_text()
    assert "INFO step 1 learn epoch 1/2: loss" in text
    assert "INFO step 2 learn done: test top-1" in text
    assert "INFO aod: re-initialized" in text  # a plugin's log message, as on the console
    assert text.count(" epoch ") == len(EPOCH_STEPS)


def test_tensorboard_false_writes_no_events(tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = cli_flags({**RUN, "plugins": "finetune", "steps": 1, "epochs": 1, "tensorboard": "false"})
    result = runner.invoke(app, ["run", *flags, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / TB_DIR).exists()
    assert "step 1 learn epoch 1/1" in (out / "run.log").read_text()


def test_run_log_is_appended_on_resume_and_detached_after(tmp_path: Path) -> None:
    import logging

    values = {**RUN, "plugins": "finetune", "steps": 2, "epochs": 1}
    never_executed = start_run({**values, "out": str(tmp_path / "other")})
    start_run({**values, "out": str(tmp_path / "run")}).execute(until=(1, "learn"))
    resume_run(tmp_path / "run").execute()
    text = (tmp_path / "run" / "run.log").read_text()
    assert text.index("step 1 learn done") < text.index("step 2 learn done")
    assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("toolbox").handlers)
    assert not never_executed.logs.log.is_open  # the next run's log replaced its handler
    assert "learn" not in (tmp_path / "other" / "run.log").read_text()


# ----------------------------------------------------------------------------- kill and resume
@pytest.mark.slow
def test_killed_and_resumed_run_has_no_duplicate_points(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    start_run({**RUN, "out": str(reference)}).execute()
    out = tmp_path / "run"
    kills = [
        "before-rename:step1_learn.pt",   # phase points written, checkpoint not: epoch 2 is trained again
        "batch:1:sparsify:2:1",           # mid-epoch: continues from partial.pt after epoch 1
        "after-write:step1_sparsify.pt",  # between phases
    ]
    for number, event in enumerate(kills):
        args = ["run", "--resume", str(out)] if number else ["run", *cli_flags(RUN), "--out", str(out)]
        assert forked_cli(*args, kill_at=event) == -signal.SIGKILL, event  # a forked copy: no interpreter start
    done = toolbox_cli("run", "--resume", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    resume_run(out).execute()  # a finished run resumed once more writes its hparams point again

    written = raw_scalar_points(out)
    assert written[("learn/test_top1", 2)] == 2 and written[("epoch/loss", 2)] == 2  # the kill's leftovers
    assert written[("hparams/final_top1", 7)] == 2
    got, expected = scalars(read_board(out)), scalars(read_board(reference))
    assert sorted(got) == sorted(expected)
    for tag, points in got.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)) == [step for step, _ in expected[tag]], tag
    for tag in DETERMINISTIC:
        assert got[tag] == expected[tag], tag
    assert [h.step for h in read_board(out).Histograms("bn_gamma/all")] == [4]
    log = (out / "run.log").read_text()
    assert log.count("Resuming") >= len(kills) and log.count("step 2 learn done") == 1
