"""Top-5 only where it says something: runs of five classes or fewer show and store no top-5
(it would be 100 % by definition); runs of more classes show it in the console, results.md and
``toolbox report``. Older results.json files with a top-5 everywhere still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fabricate import write_image_folder
from toolbox.cli.commands import app
from toolbox.run.results import run_markdown, rows_markdown, summarize, group_results

runner = CliRunner()
TINY = ["--steps", "1", "--epochs", "1", "--arch", "cifar_resnet20", "--batch-size", "8", "--device", "cpu"]


def run_and_report(tmp_path: Path, data: list[str]) -> tuple[str, str, str]:
    """The console output, results.md and `toolbox report` output of one tiny run."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *data, *TINY, "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    return result.output, (out / "results.md").read_text(), report.output + (tmp_path / "report" / "report.csv").read_text()


def test_a_three_class_run_shows_no_top5(tmp_path: Path) -> None:
    for split, per, seed in (("train", 6, 0), ("test", 2, 1)):
        write_image_folder(tmp_path / split, classes=("ant", "bee", "cat"), per_class=per, size=(16, 16), rgb=True,
                           seed=seed)
    console, markdown, report = run_and_report(tmp_path, ["--dataset", "imagefolder", "--train", str(tmp_path / "train"),
                                                          "--test", str(tmp_path / "test"), "--image-size", "16"])
    for text in (console, markdown, report):
        assert "top-5" not in text and "top5" not in text, text
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "top5" not in results["steps"][0] and "top5" not in results["steps"][0]["phases"][0]


def test_a_ten_class_run_shows_top5(tmp_path: Path) -> None:
    console, markdown, report = run_and_report(tmp_path, ["--dataset", "synthetic", "--per-class", "4"])
    assert "top-5" in console and "top-5 %" in markdown and "top-5 %" in report and "top5_mean" in report
    step = json.loads((tmp_path / "run" / "results.json").read_text())["steps"][0]
    assert 0 <= step["top1"] <= step["top5"] <= 100


@pytest.mark.parametrize("top5", [90.0, None])
def test_older_and_newer_results_both_make_tables(top5: float | None) -> None:
    step = {"step": 1, "top1": 50.0, "train_seconds": 1.0, "params": 10, "macs": 2e6, "sparsity": None,
            "phases": [{"phase": "learn", "epochs": 1, "images": 8, "top1": 50.0, "train_seconds": 1.0}]}
    if top5 is not None:  # an older file (or more than five classes)
        step["top5"] = step["phases"][0]["top5"] = top5
    results = {"config": {"arch": "a", "dataset": "d", "plugins": [], "steps": 1, "seed": 0}, "steps": [step]}
    tables = run_markdown(results) + rows_markdown(summarize(group_results([results])))
    assert ("90.00" in tables) == (top5 is not None) and ("top-5" in tables) == (top5 is not None)
