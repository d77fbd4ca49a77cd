"""Comparison reports across runs and seeds, built from run directories alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolbox.errors import UsageError
from toolbox.run.results import group_runs, summarize, write_comparison


def _fake_run(root: Path, name: str, plugins: list[str], seed: int, top1: list[float], epochs: int = 1) -> None:
    run = root / name
    run.mkdir(parents=True)
    config = {"plugins": plugins, "seed": seed, "epochs": epochs, "out": str(run), "arch": "a", "dataset": "d", "steps": len(top1)}
    steps = [{"step": i + 1, "top1": t, "top5": 99.0, "train_seconds": 2.0, "params": 10, "macs": 2e6,
              "sparsity": 0.5 if plugins else None, "phases": []} for i, t in enumerate(top1)]
    (run / "results.json").write_text(json.dumps({"config": config, "steps": steps}))


def test_mean_std_over_seeds_per_method(tmp_path: Path) -> None:
    _fake_run(tmp_path, "a0", ["sst"], 0, [50.0, 60.0])
    _fake_run(tmp_path, "a1", ["sst"], 1, [52.0, 62.0])
    _fake_run(tmp_path, "b0", [], 0, [40.0, 45.0])
    rows = summarize(group_runs(sorted(p for p in tmp_path.iterdir())))
    sst = [r for r in rows if r["method"] == "sst"]
    assert [r["top1_mean"] for r in sst] == [51.0, 61.0]
    assert sst[0]["top1_std"] == pytest.approx(2 ** 0.5)
    assert sst[0]["seeds"] == 2 and sst[0]["seed_list"] == [0, 1]
    plain = [r for r in rows if r["method"] == "plain"]
    assert plain[0]["top1_std"] == 0.0 and plain[0]["sparsity"] is None


def test_same_plugins_different_config_are_separate_rows(tmp_path: Path) -> None:
    _fake_run(tmp_path, "e1", ["finetune"], 0, [50.0], epochs=1)
    _fake_run(tmp_path, "e2", ["finetune"], 0, [55.0], epochs=2)
    labels = set(group_runs(sorted(tmp_path.iterdir())))
    assert labels == {"finetune (epochs=1)", "finetune (epochs=2)"}


def test_write_comparison_files_and_empty_input(tmp_path: Path) -> None:
    _fake_run(tmp_path / "runs", "a0", ["sst"], 0, [50.0, 60.0])
    rows = write_comparison([tmp_path / "runs"], tmp_path / "out")
    assert len(rows) == 2
    assert (tmp_path / "out" / "report.csv").read_text().startswith("method,step,seeds")
    with pytest.raises(UsageError, match="No results.json"):
        write_comparison([tmp_path / "nothing"], tmp_path / "out2")


def test_steps_markdown_puts_steps_on_lines_and_bolds_each_steps_best() -> None:
    from toolbox.run.results import steps_markdown

    def row(method: str, step: int, top1: float) -> dict:
        return {"method": method, "step": step, "top1_mean": top1, "top1_std": 0.5, "train_seconds": 12.0}

    text = steps_markdown([row("a", 1, 80.0), row("a", 2, 85.0), row("b", 1, 81.0)])
    lines = text.splitlines()
    assert lines[0] == "| step | a | b |"
    assert lines[2] == "| 1 | 80.00 ± 0.50 (12 s) | **81.00 ± 0.50** (12 s) |"
    assert lines[3] == "| 2 | **85.00 ± 0.50** (12 s) | - |"
