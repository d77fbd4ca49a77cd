"""The throughput benchmark runs end to end at a tiny size and reports every row."""

from __future__ import annotations

from pathlib import Path

from benchmark_module import load_benchmark


def _load():
    return load_benchmark("throughput")


def test_tiny_throughput_run_reports_every_table(tmp_path: Path) -> None:
    bench = _load()
    record = bench.main(["--dataset", "synthetic", "--batch-size", "8", "--batches", "2", "--repeats", "1",
                         "--threads", "1", "--no-compile", "--peak-size", "256", "--out", str(tmp_path / "t.json")])
    assert len(record["loops"]) == 6 and len(record["pipelines"]) == 4 and record["compact_teacher_gain"] > 0
    assert all(v > 0 for table in ("loops", "pipelines", "settings") for v in record[table].values())
    assert record["teacher"]["teacher_compact_folded_ms"] > 0 and 0 < record["flops"]["fraction"]["fp32"] < 1
    assert 0 < record["teacher"]["compact_teacher_macs_ratio"] < 0.8
    assert (tmp_path / "t.json").is_file()


def test_no_op_plugin_implements_every_hook() -> None:
    from toolbox import hookspecs

    bench = _load()
    specs = {name for name in dir(hookspecs) if name.startswith("toolbox_")  # deprecated aliases left out
             and not getattr(hookspecs, name).toolbox_spec.get("warn_on_impl")}
    assert specs and specs <= set(dir(bench.NoOpPlugin))


def test_preset_sets_defaults_that_flags_override() -> None:
    bench = _load()
    args = bench.parse_args(["--preset", "resnet110"])
    assert args.arch == "cifar_resnet110" and args.batch_sizes == [128, 256] and args.tables == "1,4,5"
    args = bench.parse_args(["--preset", "resnet110", "--batch-size", "64", "--tables", "1"])
    assert args.arch == "cifar_resnet110" and args.batch_sizes == [64] and args.tables == "1"
    assert bench.parse_args([]).batch_sizes == [128]


def test_several_batch_sizes_give_one_record_each(tmp_path: Path) -> None:
    bench = _load()
    record = bench.main(["--dataset", "synthetic", "--batch-size", "4,8", "--batches", "1", "--repeats", "1",
                         "--threads", "1", "--tables", "1", "--out", str(tmp_path / "t.json")])
    assert [r["batch_size"] for r in record["runs"]] == [4, 8]
    assert all(len(r["loops"]) == 6 and all(v > 0 for v in r["loops"].values()) for r in record["runs"])
