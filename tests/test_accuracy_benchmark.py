"""The accuracy benchmark's --quick mode: every row runs, a kill is picked up, the table is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmark_module import load_benchmark


def _load():
    return load_benchmark("accuracy")


def test_quick_benchmark_runs_every_row_and_resumes(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "acc"
    rows = bench.main(["--quick", "--seeds", "0", "--out", str(out)])
    methods = {r["method"] for r in rows}
    assert methods == {"sst_aod_msl", "finetune", "finetune_2x", "shrink_perturb_2x", "lwf", "ewc", "scratch", "joint"}
    assert (out / "primary" / "report.md").is_file()
    # a killed row: its last checkpoint is gone, the rerun resumes only that row
    run = out / "primary" / "lwf" / "seed0"
    (run / "checkpoints" / "step3_learn.pt").unlink()
    assert bench.load_results(out / "primary", ["lwf", "finetune"], [0]).keys() == {"finetune"}  # unfinished: left out
    shutil.rmtree(out / "primary" / "joint")
    again = bench.main(["--quick", "--seeds", "0", "--out", str(out), "--only", "lwf,joint"])
    assert {r["method"] for r in again} == methods
    assert (run / "checkpoints" / "step3_learn.pt").is_file()


def test_single_step_view_and_forked_ablations(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "acc"
    bench.main(["--quick", "--seeds", "0", "--out", str(out), "--only", "sst_aod_msl,finetune"])
    method = json.loads((out / "primary" / "sst_aod_msl" / "seed0" / "results.json").read_text())

    single = bench.main(["--protocol", "single", "--seeds", "0", "--out", str(out)])
    step2 = next(r for r in single if r["method"] == "sst_aod_msl" and r["step"] == 2)
    learn2 = next(p for p in method["steps"][1]["phases"] if p["phase"] == "learn")
    assert {r["step"] for r in single} == {1, 2} and step2["top1_mean"] == learn2["top1"]
    assert (out / "single" / "report.md").is_file()

    bench.main(["--protocol", "ablations", "--out", str(out), "--only", "control,no_reinit,no_sst,no_msl"])
    no_reinit = json.loads((out / "ablations" / "no_reinit" / "seed0" / "results.json").read_text())
    assert no_reinit["config"]["plugin"]["reinit"] == "none"
    assert no_reinit["steps"][0] == method["steps"][0]  # the shared step 1, taken over unchanged
    assert [s["step"] for s in no_reinit["steps"]] == [1, 2] and len(no_reinit["steps"][1]["phases"]) == 1
    no_sst = json.loads((out / "ablations" / "no_sst" / "seed0" / "results.json").read_text())
    assert no_sst["config"]["plugins"] == ["aod"] and "sst_mode" not in no_sst["config"]["plugin"]
    assert [p["phase"] for s in no_sst["steps"] for p in s["phases"]] == ["learn", "learn"]
    no_msl = json.loads((out / "ablations" / "no_msl" / "seed0" / "results.json").read_text())
    assert no_msl["config"]["plugins"] == ["sst", "aod"] and len(no_msl["steps"]) == 3
    report = (out / "ablations" / "report.md").read_text()
    assert "no_reinit" in report and "no_msl" in report and "| control |" in report


def test_precision_flag_reaches_every_run(tmp_path: Path) -> None:
    import yaml

    bench = _load()
    bench.main(["--quick", "--seeds", "0", "--out", str(tmp_path), "--only", "finetune", "--precision", "bf16"])
    config = yaml.safe_load((tmp_path / "primary" / "finetune" / "seed0" / "config.yaml").read_text())
    assert config["precision"] == "bf16"


def test_records_let_a_fresh_checkout_skip_finished_runs(tmp_path: Path) -> None:
    bench = _load()
    records = tmp_path / "records"
    args = ["--quick", "--seeds", "0", "--only", "finetune", "--records", str(records)]
    first = bench.main([*args, "--out", str(tmp_path / "a")])
    kept = records / "primary" / "finetune" / "seed0.json"
    assert kept.is_file()
    again = bench.main([*args, "--out", str(tmp_path / "b")])  # another checkout: nothing trains
    assert not (tmp_path / "b" / "primary" / "finetune" / "seed0").exists()
    assert again == first
    changed = bench.main([*args, "--out", str(tmp_path / "c"), "--precision", "bf16"])  # another config trains
    assert (tmp_path / "c" / "primary" / "finetune" / "seed0" / "results.json").is_file() and changed


def test_tuning_stage_then_tuned_runs(tmp_path: Path) -> None:
    bench = _load()
    records, out = tmp_path / "records", tmp_path / "acc"
    common = ["--quick", "--out", str(out), "--records", str(records), "--only", "finetune,lwf"]
    bench.main(["--protocol", "tune", "--trials", "2", *common])
    for row in ("finetune", "lwf"):
        summary = json.loads((records / "tuning" / f"{row}.json").read_text())
        assert summary["budget"] == 2 and len(summary["trials"]) == 2 and summary["val_per_class"] > 0
        assert summary["trials"][0]["params"] == bench.tuning.defaults({"lr": 0.05, "plugins": [row]}, bench.tuning.SPACES[row])
        assert set(summary["params"]) == set(bench.tuning.SPACES[row])
    assert "| lwf |" in (out / "tuning" / "report.md").read_text()
    rows = bench.main(["--tuned", "--seeds", "0", *common])
    assert {r["method"] for r in rows} == {"finetune", "lwf"}
    config = json.loads((out / "primary_tuned" / "lwf" / "seed0" / "results.json").read_text())["config"]
    chosen = json.loads((records / "tuning" / "lwf.json").read_text())["params"]
    assert config["val_per_class"] > 0 and config["plugin"]["alpha"] == chosen["alpha"]


def test_a_study_continues_from_its_journal_in_a_fresh_checkout(tmp_path: Path) -> None:
    bench = _load()
    records = tmp_path / "records"
    common = ["--protocol", "tune", "--quick", "--records", str(records), "--only", "finetune"]
    bench.main([*common, "--trials", "1", "--out", str(tmp_path / "a")])
    first = json.loads((records / "tuning" / "finetune.json").read_text())
    bench.main([*common, "--trials", "2", "--out", str(tmp_path / "b")])  # the first checkout is gone
    summary = json.loads((records / "tuning" / "finetune.json").read_text())
    assert summary["budget"] == 2 and [t["number"] for t in summary["trials"]] == [0, 1]
    assert summary["trials"][0] == first["trials"][0]  # kept from the journal, not trained again
    assert sorted(p.name for p in (tmp_path / "b" / "tuning" / "finetune" / "trials").iterdir()) == ["0001"]


def test_a_trial_left_running_by_a_killed_checkout_is_replaced(tmp_path: Path, monkeypatch) -> None:
    import optuna

    from toolbox.tune.storage import open_storage

    bench = _load()
    monkeypatch.setattr(bench.tuning, "HEARTBEAT", 1)  # stale after 2 s instead of 2 min
    records = tmp_path / "records"
    common = ["--protocol", "tune", "--quick", "--records", str(records), "--only", "finetune"]
    bench.main([*common, "--trials", "1", "--out", str(tmp_path / "a")])
    journal = f"journal:{(records / 'tuning' / 'finetune.journal').resolve()}"
    optuna.load_study(study_name="finetune", storage=open_storage(journal)).ask()  # running when killed
    bench.main([*common, "--trials", "2", "--out", str(tmp_path / "b")])
    states = [t.state.name for t in optuna.load_study(study_name="finetune", storage=open_storage(journal)).get_trials()]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    summary = json.loads((records / "tuning" / "finetune.json").read_text())
    assert [t["number"] for t in summary["trials"]] == [0, 2]


def test_tuning_table_lists_chosen_values_and_per_step_scores(tmp_path: Path) -> None:
    bench = _load()
    summary = {"row": "finetune", "budget": 8, "params": {"lr": 0.0912345}, "value": 87.4,
               "per_step": {"2": 86.85, "10": 90.0, "1": 85.1}, "default_value": 87.2,
               "trials": [{"state": "COMPLETE"}, {"state": "PRUNED"}, {"state": "PRUNED"}]}
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "finetune.json").write_text(json.dumps(summary))
    table = bench.tuning.tuning_markdown(tmp_path, ["finetune", "lwf"])  # lwf: not tuned, left out
    assert table.splitlines()[2] == "| finetune | 3 (2) | lr=0.0912 | 85.10 / 86.85 / 90.00 | 87.40 | 87.20 |"
    assert len(table.splitlines()) == 3


def test_paired_differences_pair_runs_by_seed() -> None:
    bench = _load()

    def run(seed: int, *top1: float) -> dict:
        return {"config": {"seed": seed}, "steps": [{"top1": t} for t in top1]}

    groups = {"sst_aod_msl": [run(0, 80, 90), run(1, 82, 88)],
              "finetune": [run(1, 81, 89), run(0, 78, 91), run(2, 0, 0)]}  # seed 2: no method run to pair with
    lines = bench.paired_markdown(groups).splitlines()
    assert lines[0] == "| step | vs finetune |"
    assert lines[2] == "| 1 | +1.50 ± 0.71 (2/2) |"  # differences 2 (seed 0) and 1 (seed 1)
    assert lines[3] == "| 2 | -1.00 ± 0.00 (0/2) |"
