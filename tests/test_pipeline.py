"""The paper's pipeline end to end on the synthetic set: phases, masks, resume, ablations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from toolbox.errors import UsageError
from toolbox.run.start import resume_run, start_run
from toolbox.storage.checkpoint import load_checkpoint, phase_checkpoint_path


def _strip_time(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results without wall-clock fields (they differ between any two runs)."""
    out = []
    for step in steps:
        step = {k: v for k, v in step.items() if k != "train_seconds"}
        step["phases"] = [{k: v for k, v in p.items() if k != "train_seconds"} for p in step["phases"]]
        out.append(step)
    return out


def test_sst_aod_msl_runs_the_papers_phases(tiny_values: dict[str, Any]) -> None:
    results = start_run({**tiny_values, "plugins": "sst,aod,msl"}).execute()
    phases = [[p["phase"] for p in s["phases"]] for s in results["steps"]]
    assert phases == [["learn", "sparsify"], ["learn", "sparsify"], ["learn"]]
    for step in results["steps"][:2]:
        sparsify = step["phases"][1]
        assert sparsify["sparsity"] == pytest.approx(0.5, abs=0.02)
        assert sparsify["sparsity_target_reached"] == 1
        assert step["sparsity"] == sparsify["sparsity"]
    out = Path(tiny_values["out"])
    checkpoint = load_checkpoint(phase_checkpoint_path(out, 1, "sparsify"))
    masks = checkpoint["masks"]
    assert masks and all(m.dtype == torch.bool for m in masks.values())
    # the masked gammas are exactly zero at the end of SST
    for name, mask in masks.items():
        assert torch.all(checkpoint["state_dict"][f"{name}.weight"][mask] == 0)
    # AOD re-initialized them at step 2 (gamma no longer zero after re-init and training)
    step2 = load_checkpoint(phase_checkpoint_path(out, 2, "learn"))["state_dict"]
    assert any(torch.any(step2[f"{n}.weight"][m] != 0) for n, m in masks.items())
    metrics = (out / "metrics.jsonl").read_text()
    for term in ('"aod_kd"', '"msl_kd"', '"sst_ratio"', '"sst_s"'):
        assert term in metrics
    assert (out / "gamma_hist_step1.png").is_file()


def test_resume_in_the_middle_reproduces_the_final_numbers(tiny_values: dict[str, Any], tmp_path: Path) -> None:
    values = {**tiny_values, "plugins": "sst,aod,msl"}
    full = start_run({**values, "out": str(tmp_path / "full")}).execute()
    cut = tmp_path / "cut"
    start_run({**values, "out": str(cut)}).execute()
    for step, phase in ((2, "sparsify"), (3, "learn")):  # killed after step 2's AOD phase
        phase_checkpoint_path(cut, step, phase).unlink()
    resumed = resume_run(cut).execute()
    assert _strip_time(resumed["steps"]) == _strip_time(full["steps"])


@pytest.mark.parametrize("plugins", ["sst,aod", "aod", "sst,lwf", "lwf", "sst"])
def test_ablations_run(tiny_values: dict[str, Any], plugins: str) -> None:
    results = start_run({**tiny_values, "steps": 2, "plugins": plugins}).execute()
    assert len(results["steps"]) == 2


@pytest.mark.parametrize("plugins,message", [
    ("msl", "msl"),
    ("sst,aod,lwf", "double"),
])
def test_impossible_combinations_are_refused(tiny_values: dict[str, Any], plugins: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        start_run({**tiny_values, "plugins": plugins})


def test_bad_ratio_is_refused(tiny_values: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match=r"ratio"):
        start_run({**tiny_values, "plugins": "sst,aod,msl", "ratio": "1.0"})
