"""``benchmarks/served.py``: the model a `toolbox step` user is served after each step, by hand and
on the committed imbalanced-arrivals records (the numbers BENCHMARKS.md quotes)."""

from __future__ import annotations

from benchmark_module import ROOT, load_benchmark

served = load_benchmark("served")


def step(top1: float, served_top1: float, promoted: bool | None) -> dict:
    promotion = None if promoted is None else {"promoted": promoted}
    return {"top1": top1, "served": {"top1": served_top1}, "promotion": promotion}


def test_a_held_back_step_keeps_the_model_served_before() -> None:
    steps = [step(60.0, 55.0, None), step(70.0, 69.0, True), step(50.0, 48.0, False), step(80.0, 81.0, True)]
    assert served.served_top1(steps) == [55.0, 69.0, 69.0, 81.0]
    assert served.held_back(steps) == 1


def test_the_records_give_the_numbers_benchmarks_md_quotes() -> None:
    table = served.served_table(ROOT / "benchmarks" / "records" / "compare-dirichlet")
    lines = table.splitlines()
    assert lines[0] == "| step | sst_aod_msl | lwf | joint | finetune_2x | shrink_perturb_2x |"
    assert lines[5] == "| 4 | 66.00 ± 13.25 | 68.71 ± 10.87 | 87.41 ± 2.35 | 68.26 ± 8.97 | 68.41 ± 8.96 |"
    assert lines[6] == "| held back | 4 | 2 | 0 | 5 | 4 |"
    benchmarks_md = (ROOT / "BENCHMARKS.md").read_text()
    assert "the method 66.00 ± 13.25, finetune_2x 68.26 ± 8.97" in benchmarks_md
