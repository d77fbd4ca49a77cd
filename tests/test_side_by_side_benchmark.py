"""The side-by-side benchmark times real worker processes at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_module import load_benchmark


def test_layouts_parse_and_reject_bad_input() -> None:
    bench = load_benchmark("side_by_side")
    assert bench.parse_layout("2x1") == (2, 1) and bench.parse_layout("1X2") == (1, 2)
    for bad in ("2", "ax1", "0x2", "2x0"):
        with pytest.raises(ValueError, match="layout"):
            bench.parse_layout(bad)


def test_tiny_run_times_every_layout_with_all_its_workers(tmp_path: Path) -> None:
    bench = load_benchmark("side_by_side")
    out = tmp_path / "s.json"
    record = bench.main(["--layouts", "1x1,2x1", "--dataset", "synthetic", "--batch-size", "4",
                         "--batches", "2", "--rounds", "1", "--precision", "fp32", "--out", str(out)])
    assert set(record["img_per_s"]) == {"1x1", "2x1"}
    assert all(len(values) == 1 and min(values) > 0 for values in record["rounds"].values())
    assert json.loads(out.read_text())["img_per_s"] == record["img_per_s"]
