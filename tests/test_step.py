"""Data arriving over time: ``run --shards``, ``toolbox step`` without the earlier folders, serve files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import timm
import torch
from fabricate import write_image_folder
from typer.testing import CliRunner

import toolbox
from toolbox.cli.commands import app

runner = CliRunner()
CLASSES = ("ant", "bee", "cat")
TINY = ["--arch", "cifar_resnet20", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "32",
        "--device", "cpu", "--threads", "1", "--image-size", "16", "--plugins", "sst,aod,msl"]


def folders(root: Path, count: int) -> list[Path]:
    """``count`` step folders and a test folder of the same three classes (different images)."""
    steps = []
    for k in range(count):
        write_image_folder(root / f"d{k + 1}", CLASSES, per_class=6, size=(20, 20), seed=10 + k)
        steps.append(root / f"d{k + 1}")
    write_image_folder(root / "test", CLASSES, per_class=4, size=(20, 20), seed=99)
    return steps


def run(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def steps_of(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["steps"]


def test_step_after_deleting_the_earlier_folders_equals_the_planned_run(tmp_path: Path) -> None:
    d1, d2, d3 = folders(tmp_path / "data", 3)
    test = str(tmp_path / "data" / "test")
    planned = tmp_path / "planned"
    run(["run", "--shards", f"{d1},{d2},{d3}", "--test", test, "--out", str(planned), *TINY])
    grown = tmp_path / "grown"
    run(["run", "--shards", f"{d1},{d2}", "--test", test, "--out", str(grown), *TINY])
    assert [p["phase"] for p in steps_of(grown)[-1]["phases"]] == ["learn", "sparsify"]  # open-ended
    moved = tmp_path / "arrived"
    shutil.copytree(d3, moved)
    shutil.rmtree(d1), shutil.rmtree(d2), shutil.rmtree(d3)  # the earlier data is gone
    run(["step", str(grown), "--data", str(moved)])
    a, b = steps_of(planned), steps_of(grown)
    assert len(b) == 3 and [s["top1"] for s in a] == [s["top1"] for s in b]
    assert [p["phase"] for p in b[-1]["phases"]] == ["learn", "sparsify"]
    config = (grown / "config.yaml").read_text()
    assert str(moved) in config and "classes:" in config
    for k in (1, 2, 3):
        assert (grown / "serve" / f"step{k}.pt").is_file()


def test_the_served_model_loads_in_three_lines(tmp_path: Path) -> None:
    (d1,) = folders(tmp_path / "data", 1)
    out = tmp_path / "run"
    run(["run", "--shards", str(d1), "--test", str(tmp_path / "data" / "test"), "--out", str(out), *TINY])
    data = torch.load(out / "serve" / "step1.pt", weights_only=True)
    model = timm.create_model(data["arch"], num_classes=data["num_classes"], in_chans=data["in_chans"],
                              **data["model_kwargs"])
    model.load_state_dict(data["state_dict"])
    assert data["classes"] == list(CLASSES) and len(data["normalization"]["mean"]) == data["in_chans"]
    x = torch.randn(2, data["in_chans"], 16, 16)
    assert torch.allclose(model.eval()(x), toolbox.load_model(out / "serve" / "step1.pt")(x))
    compact = tmp_path / "compact"
    run(["run", "--shards", str(d1), "--test", str(tmp_path / "data" / "test"), "--out", str(compact),
         "--serve", "compact", *TINY])
    small = toolbox.load_model(compact / "serve" / "step1.pt")
    dense = toolbox.load_model(compact / "checkpoints" / "step1_sparsify.pt")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    assert torch.allclose(small(x), dense(x), atol=1e-4)


def test_a_new_folder_with_other_classes_is_refused(tmp_path: Path) -> None:
    (d1,) = folders(tmp_path / "data", 1)
    out = tmp_path / "run"
    run(["run", "--shards", str(d1), "--test", str(tmp_path / "data" / "test"), "--out", str(out), *TINY])
    odd = tmp_path / "odd"
    write_image_folder(odd, ("ant", "bee", "cat", "dog"), per_class=2, size=(20, 20))
    result = runner.invoke(app, ["step", str(out), "--data", str(odd)])
    assert result.exit_code == 2 and f"The new folder {odd.resolve()} has class 'dog'" in result.output
    shutil.rmtree(odd / "dog"), shutil.rmtree(odd / "cat")
    result = runner.invoke(app, ["step", str(out), "--data", str(odd)])
    assert result.exit_code == 2 and "has no folder for class 'cat'" in result.output
    assert len(steps_of(out)) == 1


def test_step_needs_a_shards_run_and_shards_need_a_test_folder(tmp_path: Path, tiny_values: dict) -> None:
    (d1,) = folders(tmp_path / "data", 1)
    result = runner.invoke(app, ["run", "--shards", str(d1), "--out", str(tmp_path / "r"), *TINY])
    assert result.exit_code == 2 and "--shards needs --test DIR" in result.output
    run(["run", "--dataset", "synthetic", "--steps", "1", "--epochs", "1", "--device", "cpu",
         "--out", str(tmp_path / "plain")])
    result = runner.invoke(app, ["step", str(tmp_path / "plain"), "--data", str(d1)])
    assert result.exit_code == 2 and "was not started with --shards" in result.output
