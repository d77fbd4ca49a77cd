"""Checkpoints are data, never instructions: crafted fields, code-carrying pickles, prune targets,
and evaluation normalized as the run trained (issue 27)."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.errors import CheckpointError, UsageError
from toolbox.models import build_model
from toolbox.storage import checkpoint as ckpt

runner = CliRunner()
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


class WritesMarker:
    """Unpickles into ``open(marker, "w")``: creates the marker file if the pickle ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


def _base() -> dict[str, Any]:
    model = build_model("cifar_resnet20", 10, 3)
    return ckpt.make_checkpoint(model, arch="cifar_resnet20", num_classes=10, in_chans=3, model_kwargs={},
                                step=1, phase="learn", masks={}, records={},
                                options={"dataset": "synthetic"}, results=[])


def _refused_everywhere(path: Path, evil: Path | None = None, data: dict[str, Any] | None = None) -> str:
    """Load ``path`` through the Python API (refused when loading; ``data``, the dict in memory,
    refused by ``model_from_checkpoint``) and ``toolbox eval``: one sentence, exit 2, and ``evil``
    never opened; return the message."""
    global _OPENED
    _OPENED = []
    try:
        if data is not None:
            with pytest.raises(CheckpointError):
                ckpt.model_from_checkpoint(data)
        with pytest.raises(CheckpointError) as info:
            ckpt.load_checkpoint(path)
        result = runner.invoke(app, ["eval", str(path), "--device", "cpu"])
        opened = list(_OPENED)
    finally:
        _OPENED = None
    message = str(info.value)
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0, message
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and "Traceback" not in result.output
    assert " ".join(result.output.split()).endswith(" ".join(message.split()))
    if evil is not None:
        assert not [name for name in opened if Path(name).name == evil.name], opened
    return message


@pytest.mark.parametrize("kwargs,named", [
    ({"checkpoint_path": "EVIL"}, "'checkpoint_path'"),
    ({"pretrained": True}, "'pretrained'"),
    ({"pretrained_cfg_overlay": {"file": "EVIL"}}, "'pretrained_cfg_overlay'"),
    ({"cache_dir": "EVIL"}, "'cache_dir'"),
    ({"features_only": True}, "'features_only'"),
    ({"shortcut": "EVIL"}, "'shortcut'"),  # a path as a value
    ({"shortcut": ["A", "EVIL"]}, "'shortcut'"),
])
def test_crafted_model_kwargs_never_reach_timm(tmp_path: Path, kwargs: dict[str, Any], named: str) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, evil)
    data = _base()
    data["model_kwargs"] = json.loads(json.dumps(kwargs).replace("EVIL", str(evil)))
    ckpt.save_checkpoint(tmp_path / "crafted.pt", data)
    message = _refused_everywhere(tmp_path / "crafted.pt", evil, data)
    assert named in message and "model_kwargs" in message


@pytest.mark.parametrize("field,value", [
    ("arch", 5), ("arch", "../evil"), ("num_classes", "10"), ("num_classes", -1), ("num_classes", True),
    ("in_chans", 3.0), ("in_chans", 0), ("state_dict", "weights"), ("state_dict", {"fc.weight": [1.0]}),
    ("records", ["structure"]), ("records", {"structure": "removed"}),
    ("records", {"structure": {"format": "toolbox-structure/1", "ops": [{"module": 1, "dim": "out"}]}}),
    ("records", {"structure": {"format": "toolbox-structure/1",
                               "ops": [{"module": "conv1", "pruner": "ConvPruner", "dim": "out", "size": 4,
                                        "keep": [9]}]}}),
    ("model_kwargs", "shortcut=A"), ("normalization", {"mean": [0.5], "std": [0.0]}),
    ("input_size", [3, "32", 32]), ("options", ["dataset"]),
])
def test_crafted_fields_are_one_sentence(tmp_path: Path, field: str, value: Any) -> None:
    data = _base()
    data[field] = value
    ckpt.save_checkpoint(tmp_path / "crafted.pt", data)
    _refused_everywhere(tmp_path / "crafted.pt", data=data)


def test_pickles_that_run_code_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": WritesMarker(marker)}, evil)  # what timm would read through checkpoint_path
    data = _base()
    data["model_kwargs"] = {"checkpoint_path": str(evil)}
    ckpt.save_checkpoint(tmp_path / "points.pt", data)
    _refused_everywhere(tmp_path / "points.pt", evil)
    inside = tmp_path / "inside.pt"
    torch.save({**_base(), "records": {"x": WritesMarker(marker)}}, inside)
    assert "Refusing to load" in _refused_everywhere(inside)
    assert not marker.exists()


def test_user_model_kwargs_pass_the_same_allow_list() -> None:
    with pytest.raises(UsageError, match="'checkpoint_path' is not allowed"):
        build_model("cifar_resnet20", 10, 3, {"checkpoint_path": "/tmp/x.pt"})
    assert build_model("cifar_resnet20", 10, 3, {"shortcut": "A", "drop_rate": 0.1}) is not None


def test_prune_output_is_not_a_phase_checkpoint(tmp_path: Path) -> None:
    from toolbox.pruning.prune_file import prune_checkpoint

    phase = _base()
    phase["done"] = [[1, "learn"]]
    assert ckpt.check_phase_checkpoint(phase) is phase
    ckpt.save_checkpoint(tmp_path / "in.pt", phase)
    prune_checkpoint(tmp_path / "in.pt", tmp_path / "out.pt", ratio=0.3, repeats=0)
    with pytest.raises(CheckpointError, match="not a run's phase checkpoint"):
        ckpt.check_phase_checkpoint(ckpt.load_checkpoint(tmp_path / "out.pt"), "out.pt")
    partial = {**phase, "partial": True, "epochs_done": 1, "epochs": 3, "optimizer": {}, "rng": {"cpu": "x"}}
    with pytest.raises(CheckpointError, match="unfinished-phase fields"):
        ckpt.check_phase_checkpoint(partial)


def test_prune_refuses_to_overwrite_a_runs_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("arch: cifar_resnet20\n")
    path = run / "checkpoints" / "step1_learn.pt"
    ckpt.save_checkpoint(path, {**_base(), "done": [[1, "learn"]]})
    before = path.read_bytes()
    for out, says in ((path, "is the checkpoint being pruned"), (run / "checkpoints" / "step2_learn.pt",
                                                                  "checkpoints/ folder")):
        result = runner.invoke(app, ["prune", str(path), "--out", str(out), "--ratio", "0.3"])
        assert result.exit_code == 2, result.output
        assert says in " ".join(result.output.split()) and "Traceback" not in result.output
    assert path.read_bytes() == before and not (run / "checkpoints" / "step2_learn.pt").exists()


def test_eval_uses_the_runs_normalization_not_the_folder_now(tmp_path: Path) -> None:
    from fabricate import write_image, write_image_folder

    train, test = tmp_path / "d" / "train", tmp_path / "d" / "test"
    write_image_folder(train, per_class=6, size=(16, 16), seed=1)
    write_image_folder(test, per_class=3, size=(16, 16), seed=2)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--plugins", "finetune", "--dataset", "imagefolder", "--train", str(train),
                                 "--test", str(test), "--image-size", "16", "--arch", "cifar_resnet20", "--steps",
                                 "1", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = [out / "checkpoints" / "step1_learn.pt", out / "serve" / "step1.pt"]
    where = ["--dataset", "imagefolder", "--data-root", str(tmp_path / "d"), "--device", "cpu"]

    def scores() -> list[str]:
        lines = []
        for path in files:
            result = runner.invoke(app, ["eval", str(path), *where])
            assert result.exit_code == 0, result.output
            lines.append(" ".join(result.output.split()).split("test set:")[1])
        return lines

    before = scores()
    record = json.loads((out / "results.json").read_text())["steps"][0]["phases"][0]
    assert before[0] == before[1] and before[0].endswith(f"loss {record['test_loss']:.4f}")  # as the run scored it
    for i in range(20):
        for name in ("ant", "bee"):
            write_image(train / name / f"white{i}.png", np.full((16, 16), 255, np.uint8))
    assert scores() == before
