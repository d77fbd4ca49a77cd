"""benchmarks/precision.py: the fp32 vs bf16 table, paired by seed, and its verdict."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_module import load_benchmark


def _load():
    return load_benchmark("precision")


def _write(folder: Path, row: str, seed: int, top1: list[float], layout: str) -> None:
    results = {"config": {"seed": seed}, "steps": [{"step": i + 1, "top1": v} for i, v in enumerate(top1)]}
    path = folder / row / f"seed{seed}.json" if layout == "record" else folder / row / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))


def test_table_pairs_seeds_and_judges_against_the_spread(tmp_path: Path) -> None:
    bench = _load()
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    for seed, (a, b) in enumerate([((80.0, 85.0), (80.5, 83.5)), ((82.0, 86.0), (81.5, 84.5)), ((81.0, 87.0), (81.0, 85.5))]):
        _write(fp32, "m", seed, list(a), "record")
        _write(bf16, "m", seed, list(b), "run")  # a run directory's results.json reads the same
    _write(fp32, "m", 9, [50.0, 50.0], "record")  # a seed without its pair is left out
    table, agree = bench.compare(bf16, fp32, ["m"])
    step1, step2 = table.splitlines()[2:4]
    assert "| m | 1 | 3 | 81.00 ± 1.00 | 81.00 ± 0.50 | +0.00 ± 0.50 | 1/3 | yes |" == step1
    assert "-1.50 ± 0.00" in step2 and "0/3" in step2 and "**no**" in step2  # 1.5 points off, spread 1.0: no
    assert agree is False
    assert bench.compare(bf16, fp32, ["absent"])[1] is True
