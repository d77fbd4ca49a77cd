"""End-to-end runs on the synthetic set: files written, baselines, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from toolbox.errors import UsageError
from toolbox.run.start import resume_run, start_run
from toolbox.storage.checkpoint import load_checkpoint, phase_checkpoint_path


def test_multistep_run_writes_its_directory(tiny_values: dict[str, Any]) -> None:
    results = start_run({**tiny_values, "plugins": ["finetune"]}).execute()
    out = Path(tiny_values["out"])
    for name in ("config.yaml", "shards.json", "metrics.jsonl", "results.json", "results.md", "top1_per_step.png"):
        assert (out / name).is_file(), name
    assert [s["step"] for s in results["steps"]] == [1, 2, 3]
    for step in results["steps"]:
        assert 0 <= step["top1"] <= step["top5"] <= 100
        assert step["train_seconds"] > 0 and step["params"] > 0 and step["macs"] > 0
        assert phase_checkpoint_path(out, step["step"], "learn").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["steps"] == results["steps"]
    assert saved["config"]["plugins"] == ["finetune"]
    shards = json.loads((out / "shards.json").read_text())["shards"]
    assert len(shards) == 3 and not set(shards[0]) & set(shards[1])
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 3
    checkpoint = load_checkpoint(phase_checkpoint_path(out, 3, "learn"))
    assert (checkpoint["arch"], checkpoint["step"], checkpoint["phase"], checkpoint["num_classes"]) == ("cifar_resnet20", 3, "learn", 10)
    assert "| 3 |" in (out / "results.md").read_text()


def test_synthetic_is_learnable(tiny_values: dict[str, Any]) -> None:
    results = start_run({**tiny_values, "steps": 1, "epochs": 8}).execute()
    assert results["steps"][0]["top1"] > 50  # chance is 10 %


def test_joint_trains_on_all_shards_seen(tiny_values: dict[str, Any]) -> None:
    results = start_run({**tiny_values, "plugins": ["joint"]}).execute()
    images = [s["phases"][0]["images"] for s in results["steps"]]
    assert images == [images[0], 2 * images[0], 3 * images[0]]


def test_resume_reproduces_uninterrupted_run(tiny_values: dict[str, Any], tmp_path: Path) -> None:
    full = start_run({**tiny_values, "out": str(tmp_path / "full")}).execute()
    partial_dir = tmp_path / "partial"
    start_run({**tiny_values, "out": str(partial_dir)}).execute()
    # simulate a kill after step 1: drop the later checkpoints and results
    for step in (2, 3):
        phase_checkpoint_path(partial_dir, step, "learn").unlink()
    resumed = resume_run(partial_dir).execute()
    strip = lambda steps: [{k: v for k, v in s.items() if k != "train_seconds"} | {"phases": [  # noqa: E731
        {k: v for k, v in p.items() if k != "train_seconds"} for p in s["phases"]]} for s in steps]
    assert strip(resumed["steps"]) == strip(full["steps"])
    a = load_checkpoint(phase_checkpoint_path(tmp_path / "full", 3, "learn"))["state_dict"]
    b = load_checkpoint(phase_checkpoint_path(partial_dir, 3, "learn"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_skips_a_truncated_checkpoint(tiny_values: dict[str, Any]) -> None:
    out = Path(tiny_values["out"])
    start_run({**tiny_values, "steps": 2}).execute()
    last = phase_checkpoint_path(out, 2, "learn")
    last.write_bytes(last.read_bytes()[:1000])
    run = resume_run(out)
    assert run.state.done == {(1, "learn")}
    assert len(run.execute()["steps"]) == 2


def test_existing_run_directory_is_not_overwritten(tiny_values: dict[str, Any]) -> None:
    start_run({**tiny_values, "steps": 1}).execute()
    with pytest.raises(UsageError, match="already holds a run; pass --resume"):
        start_run({**tiny_values, "steps": 1})


def test_keep_optimizer_state_between_steps(tiny_values: dict[str, Any]) -> None:
    run = start_run({**tiny_values, "steps": 2, "reset_optimizer": "false"})
    run.execute()
    checkpoint = load_checkpoint(phase_checkpoint_path(Path(tiny_values["out"]), 2, "learn"))
    assert checkpoint["optimizer"] is not None and checkpoint["optimizer"]["state"]


def test_validation_is_held_out_of_every_shard(tiny_values: dict[str, Any]) -> None:
    run = start_run({**tiny_values, "val_per_class": 5})
    validation = set(run.validation.tolist())
    assert len(validation) == 50
    labels = run.data.train_y[run.validation]
    assert torch.bincount(labels, minlength=10).tolist() == [5] * 10
    for shard in run.shards:
        assert not validation & set(shard.tolist())
    results = run.execute()
    assert all("val_top1" in phase for step in results["steps"] for phase in step["phases"])
    saved = json.loads((Path(tiny_values["out"]) / "shards.json").read_text())
    assert sorted(saved["validation"]) == sorted(validation)
