"""The accuracy benchmark's --quick mode: every row runs, a kill is picked up, the table is written."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_runs_every_row_and_resumes(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "acc"
    rows = bench.main(["--quick", "--seeds", "0", "--out", str(out)])
    methods = {r["method"] for r in rows}
    assert {"sst,aod,msl", "lwf", "joint"} <= methods and len(methods) == 5
    assert (out / "primary" / "report.md").is_file()
    # a killed row: its last checkpoint is gone, the rerun resumes only that row
    run = out / "primary" / "lwf" / "seed0"
    (run / "checkpoints" / "step3_learn.pt").unlink()
    shutil.rmtree(out / "primary" / "joint")
    again = bench.main(["--quick", "--seeds", "0", "--out", str(out), "--only", "lwf,joint"])
    assert {r["method"] for r in again} == methods
    assert (run / "checkpoints" / "step3_learn.pt").is_file()
