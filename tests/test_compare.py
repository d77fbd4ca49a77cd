"""``toolbox compare``: paired seeds, equal-compute rows, exact paired tables, resume after a kill,
image folders, and the search spaces plugins declare."""

from __future__ import annotations

import json
import os
import multiprocessing
import signal
import statistics
import time
from pathlib import Path

import pytest
from fabricate import write_image_folder
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.compare.execute import finished, run_all
from toolbox.compare.plan import Row, plan_rows, step_epochs
from toolbox.compare.tuning import defaults, row_space
from toolbox.errors import UsageError

runner = CliRunner()
TINY = ["--steps", "2", "--epochs", "1", "--batch-size", "32", "--eval-batch-size", "256", "--arch", "cifar_resnet20",
        "--device", "cpu", "--tensorboard", "false"]


def results_of(out: Path, row: str, seed: int) -> dict:
    return json.loads((out / "runs" / row / f"seed{seed}" / "results.json").read_text())


def expected_paired_line(out: Path, step: int, first: str, others: list[str], seeds: list[int]) -> str:
    """The paired-table line of ``step``, computed here from the runs' results.json."""
    cells = []
    for other in others:
        diffs = [results_of(out, first, s)["steps"][step - 1]["top1"] - results_of(out, other, s)["steps"][step - 1]["top1"]
                 for s in seeds]
        cells.append(f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} ({sum(d > 0 for d in diffs)}/{len(diffs)})")
    return f"| {step} | " + " | ".join(cells) + " |"


def _compare_quietly(args: list[str]) -> None:
    """``toolbox compare ARGS`` in a forked child, its output dropped."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    runner.invoke(app, args)


def test_compare_on_synthetic_data_resumes_after_a_kill_without_retraining(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "sst", "finetune", "--seeds", "0,1", "--rows", "sst,finetune_2x",
            "--out", str(out), "--dataset", "synthetic", "--per-class", "4", *TINY]
    process = multiprocessing.get_context("fork").Process(target=_compare_quietly, args=(args,))
    process.start()  # forked: the toolbox is imported already, so the child starts at once
    first = out / "runs" / "sst" / "seed0"
    deadline = time.time() + 240
    while finished(first) is None and process.is_alive() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL
    assert finished(first) is not None
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "runs").rglob("results.json")
            if finished(p.parent) is not None}
    assert kept
    result = runner.invoke(app, ["compare", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    for path, (mtime, data) in kept.items():  # finished runs were read, not trained again
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, data)
    text = (out / "compare.md").read_text()
    assert "| step | sst | finetune_2x |" in text and "finetune_2x matches sst's epochs per step" in text
    assert results_of(out, "finetune_2x", 1)["config"]["epochs"] == 2 and results_of(out, "sst", 1)["config"]["epochs"] == 1
    for step in (1, 2):
        assert expected_paired_line(out, step, "sst", ["finetune_2x"], [0, 1]) in text
        assert f"- Step {step}: " in text
    same = [json.loads((out / "runs" / row / "seed1" / "shards.json").read_text())["shards"]
            for row in ("sst", "finetune_2x")]
    assert same[0] == same[1]  # paired: one split per seed
    data = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in data["rows"] if r["step"] == 1] == ["sst", "finetune_2x"]
    assert (out / "compare.csv").is_file() and (out / "top1_vs_step.png").is_file()
    (out / "compare.md").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "compare.md").read_text() == text


def test_compare_on_image_folders(tmp_path: Path) -> None:
    root = tmp_path / "data"
    classes = ("ant", "bee", "cow")
    write_image_folder(root / "train", classes, per_class=6, size=(12, 12))
    write_image_folder(root / "test", classes, per_class=2, size=(12, 12), seed=3)
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", "--methods", "sst", "finetune", "--seeds", "0,1",
                                 "--rows", "sst,finetune_2x", "--out", str(out), "--dataset", "imagefolder", "--data-root", str(root),
                                 "--image-size", "12", *TINY])
    assert result.exit_code == 0, result.output
    text = (out / "compare.md").read_text()
    assert "| step | sst | finetune_2x |" in text and "4 of 4 runs finished" in text
    for step in (1, 2):
        assert expected_paired_line(out, step, "sst", ["finetune_2x"], [0, 1]) in text
    again = runner.invoke(app, ["compare", "--methods", "sst", "lwf", "--seeds", "0,1", "--out", str(out)])
    assert again.exit_code == 2 and "holds a comparison of other methods" in again.output


def test_equal_compute_follows_the_phases_the_plugins_plan() -> None:
    base = {"dataset": "synthetic", "steps": 3, "epochs": 3}
    assert step_epochs({**base, "plugins": ["sst", "aod", "msl"]}) == [6, 6, 3]  # learn + sparsify, last: learn
    assert step_epochs({**base, "plugins": ["finetune"]}) == [3, 3, 3]
    rows = plan_rows(base, [("sst", "aod", "msl"), ("finetune",), ("joint",)])
    assert [(r.name, r.changes.get("epochs")) for r in rows] == [
        ("sst_aod_msl", None), ("finetune", None), ("joint", None), ("finetune_2x", 6), ("joint_2x", 6)]
    assert [r.name for r in plan_rows({**base, "phase_epochs": {"sparsify": 1}}, [("sst",), ("finetune",)])] == [
        "sst", "finetune", "finetune_4ep"]


def test_a_plugin_declared_space_is_used_and_a_user_file_overrides_it() -> None:
    row = Row("sst_aod_msl", ("sst", "aod", "msl"))
    values = row.values({"dataset": "synthetic"})
    space = row_space(row, values, None)
    assert set(space) == {"ratio", "alpha", "T", "teacher_bn", "msl_weight"}
    assert row_space(Row("finetune", ("finetune",)), {"plugins": ["finetune"]}, None) == {
        "lr": {"low": 0.01, "high": 0.2, "log": True}}
    mine = {"sst_aod_msl": {"alpha": [0.5, 1.0]}}
    assert row_space(row, values, mine) == {"alpha": [0.5, 1.0]}
    assert row_space(Row("finetune", ("finetune",)), {"plugins": ["finetune"]}, mine)["lr"]["high"] == 0.2
    # the first trial of every study: the row's own values that lie in its space
    assert defaults({"plugins": ["finetune"], "lr": 0.05}, {"lr": {"low": 0.01, "high": 0.2}}) == {"lr": 0.05}
    assert defaults({"plugins": ["sst"]}, {"ratio": [0.3, 0.7]}) == {}  # sst's default 0.5 is not a choice
    with pytest.raises(UsageError, match="declares a search space"):
        row_space(Row("plain", ()), {"plugins": []}, None)


def test_equal_tuning_runs_one_study_per_row_with_the_same_budget(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    space = tmp_path / "space.yaml"
    space.write_text("finetune:\n  lr: {low: 0.01, high: 0.1, log: true}\n")
    args = ["compare", "--methods", "sst", "finetune", "--seeds", "0", "--rows", "sst,finetune", "--trials", "2",
            "--space", str(space), "--out", str(out), "--dataset", "synthetic", "--per-class", "6",
            "--val-per-class", "2", "--lr", "0.05", *TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for row, searched in (("sst", {"ratio"}), ("finetune", {"lr"})):  # sst declares ratio
        record = json.loads((out / "tune" / f"{row}.json").read_text())
        assert record["budget"] == 2 and set(record["space"]) == searched  # the plugin's space, or the user's
        trials = sorted((out / "tune" / row / "trials").iterdir())
        assert len(trials) == 2
        config = (out / "runs" / row / "seed0" / "config.yaml").read_text()
        for name, value in record["values"].items():  # the chosen values train the compared run
            assert f"{name}: {value}" in config or f"{name}: '{value}'" in config, (name, value)
    # the row's own value is the first trial: finetune's lr 0.05 lies in the user's space
    first = json.loads((out / "tune" / "finetune" / "trials" / "0000" / "results.json").read_text())
    assert first["config"]["lr"] == 0.05
    kept = {p: p.stat().st_mtime_ns for p in (out / "tune").glob("*.json")}
    again = runner.invoke(app, ["compare", "--resume", str(out)])
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "tune").glob("*.json")} == kept  # not tuned again


def test_compare_on_shards_with_two_workers(tmp_path: Path) -> None:
    root = tmp_path / "data"
    classes = ("ant", "bee", "cow")
    for number in (1, 2):
        write_image_folder(root / f"d{number}", classes, per_class=4, size=(12, 12), seed=number)
    write_image_folder(root / "test", classes, per_class=2, size=(12, 12), seed=9)
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", "--methods", "finetune", "lwf", "--seeds", "0,1", "--workers", "2",
                                 "--out", str(out), "--shards", f"{root / 'd1'},{root / 'd2'}",
                                 "--test", str(root / "test"), "--image-size", "12", *TINY])
    assert result.exit_code == 0, result.output
    text = (out / "compare.md").read_text()
    assert "| step | finetune | lwf |" in text and "4 of 4 runs finished" in text
    for step in (1, 2):
        assert expected_paired_line(out, step, "finetune", ["lwf"], [0, 1]) in text
    for seed in (0, 1):
        configs = [results_of(out, row, seed)["config"] for row in ("finetune", "lwf")]
        assert configs[0]["shards"] == configs[1]["shards"] == [str(root / "d1"), str(root / "d2")]
        assert configs[0]["threads"] == configs[1]["threads"] == 1  # two workers share the two cores


def test_one_seed_shows_no_spread() -> None:
    from toolbox.compare.tables import paired_cell
    from toolbox.run.results import steps_markdown

    assert paired_cell([1.5]) == "+1.50 (1/1)" and paired_cell([1.0, 2.0]) == "+1.50 ± 0.71 (2/2)"
    rows = [dict(method=m, step=1, seeds=n, top1_mean=v, top1_std=0.0, train_seconds=3.0)
            for m, n, v in (("a", 1, 60.0), ("b", 1, 55.0))]
    assert steps_markdown(rows).splitlines()[-1] == "| 1 | **60.00** (3 s) | 55.00 (3 s) |"
    assert "60.00 ± 0.00" in steps_markdown([{**r, "seeds": 2} for r in rows])


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "finetune", "lwf", "--workers", "0"], "--workers 0: pass at least 1"),
    (["--methods", "finetune", "lwf", "--trials", "-3"], "--trials -3: pass 0"),
    (["--methods", "finetune", "lwf", "--seeds", "0,x"], "--seeds must be comma-separated whole numbers"),
    (["--methods", "finetune"], "--methods needs at least two methods"),
    (["--methods", "finetune", "finetune"], "--methods names finetune twice"),
    (["--methods", "finetune", "nosuch"], "Unknown plugin 'nosuch'"),
    (["--methods", "finetune", "lwf", "--rows", "nope"], "--rows names nope, not a row of this comparison"),
    (["--methods", "finetune", "lwf", "--split", "dirichlet:-1"], "needs a positive concentration"),
])
def test_bad_input_is_one_sentence_exit_2_and_nothing_written(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", *args, "--out", str(out), "--dataset", "synthetic", *TINY])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_that_fails_does_not_stop_the_others(tmp_path: Path, workers: int) -> None:
    """The failing run comes first; the good one still finishes and is reported, then the error is raised."""
    good = {"dataset": "synthetic", "per_class": 4, "steps": 2, "epochs": 1, "batch_size": 32,
            "eval_batch_size": 256, "arch": "cifar_resnet20", "device": "cpu", "tensorboard": False,
            "plugins": ["finetune"], "seed": 0}
    jobs = [({**good, "arch": "no_such_arch"}, tmp_path / "bad"), (good, tmp_path / "good")]
    reported: list[Path] = []
    with pytest.raises(UsageError, match="no_such_arch"):
        run_all(jobs, workers, reported.append)
    assert reported == [tmp_path / "good"] and finished(tmp_path / "good") is not None
    assert not (tmp_path / "bad" / "results.json").exists()
