"""``toolbox export``: a folder run's served model (dense and compact) through ONNX Runtime and
TorchScript gives the run's own top-1 on its test folder; a broken export is refused, unwritten."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fabricate import write_image_folder
from typer.testing import CliRunner

import toolbox
from toolbox.cli.commands import app
from toolbox.data.image_decode import decode_image
from toolbox.deploy import export

runner = CliRunner()
CLASSES = ("ant", "bee", "cat")
TINY = ["--arch", "cifar_resnet20", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "32",
        "--device", "cpu", "--threads", "1", "--image-size", "16", "--plugins", "sst"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step folder run serving its compact model (its dense masked model is in checkpoints/)."""
    root = tmp_path_factory.mktemp("export")
    write_image_folder(root / "d1", CLASSES, per_class=6, size=(20, 20), seed=10)
    write_image_folder(root / "test", CLASSES, per_class=4, size=(20, 20), seed=99)
    result = runner.invoke(app, ["run", "--shards", str(root / "d1"), "--test", str(root / "test"),
                                 "--out", str(root / "run"), "--serve", "compact", *TINY])
    assert result.exit_code == 0, result.output
    return root / "run"


def runtime_logits(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """Logits of the exported file through its own runtime (not the toolbox)."""
    if fmt == "onnx":
        import onnxruntime as ort

        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        return torch.jit.load(io.BytesIO(path.read_bytes()))(torch.from_numpy(images)).numpy()


def folder_images(meta: dict[str, Any], test: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test folder preprocessed with the recipe that travels with the export: (images, labels)."""
    recipe = meta["preprocessing"]
    paths = sorted(test.glob("*/*.png"))
    raw = np.stack([decode_image(str(p), recipe["image_size"], recipe["channels"]) for p in paths]).astype(np.float32)
    mean, std = (np.asarray(recipe[k], np.float32).reshape(1, -1, 1, 1) for k in ("mean", "std"))
    labels = np.array([meta["classes"].index(p.parent.name) for p in paths])
    return ((raw / np.float32(255) - mean) / std).astype(np.float32), labels  # recipe["scaling"]




@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exports_give_the_runs_top1(folder_run: Path, tmp_path: Path, fmt: str) -> None:
    results = json.loads((folder_run / "results.json").read_text())["steps"][0]
    models = {"dense": (folder_run / "checkpoints" / "step1_sparsify.pt", results["top1"]),
              "compact": (folder_run, results["served"]["top1"])}  # the run dir: its promoted model
    sizes = {}
    for kind, (source, top1) in models.items():
        out = tmp_path / f"{kind}.{fmt}"
        result = runner.invoke(app, ["export", str(source), "--format", fmt, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "max abs difference" in result.output
        meta = export.onnx_metadata(out) if fmt == "onnx" else json.loads(export.sidecar_path(out).read_text())
        assert meta["classes"] == list(CLASSES) and meta["step"] == 1
        images, labels = folder_images(meta, folder_run.parent / "test")
        logits = runtime_logits(fmt, out, images)
        assert logits.shape == (len(labels), len(CLASSES))  # the batch axis is dynamic
        assert abs(100.0 * float((logits.argmax(1) == labels).mean()) - top1) <= 0.01
        model = toolbox.load_model(export.resolve_model(source))
        with torch.no_grad():
            assert np.array_equal(logits.argmax(1), model(torch.from_numpy(images)).argmax(1).numpy())
        sizes[kind] = sum(p.numel() for p in model.parameters())
    assert sizes["compact"] < sizes["dense"]


def shifted(run: Any) -> Any:
    return lambda blob, images: run(blob, images) + 1e-3


def perturbed(to_bytes: Any) -> Any:
    def broken(model: torch.nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
        with torch.no_grad():
            next(model.parameters()).add_(1e-2)  # the graph's weights are not the model's
        try:
            return to_bytes(model, example, meta)
        finally:
            with torch.no_grad():
                next(model.parameters()).sub_(1e-2)
    return broken


@pytest.mark.parametrize("fmt,what", [("onnx", "graph"), ("torchscript", "output")])
def test_a_broken_export_is_refused_and_not_written(folder_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    fmt: str, what: str) -> None:
    to_bytes, run = export.EXPORTERS[fmt]
    broken = (perturbed(to_bytes), run) if what == "graph" else (to_bytes, shifted(run))
    monkeypatch.setitem(export.EXPORTERS, fmt, broken)
    out = tmp_path / f"model.{fmt}"
    result = runner.invoke(app, ["export", str(folder_run), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 2
    assert "differs from the PyTorch model by" in result.output and "nothing was written" in result.output
    assert list(tmp_path.iterdir()) == []


def test_out_never_replaces_a_file_the_toolbox_did_not_write(folder_run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "notes.onnx"
    foreign.write_bytes(b"mine")
    result = runner.invoke(app, ["export", str(folder_run), "--format", "onnx", "--out", str(foreign)])
    assert result.exit_code == 2 and "was not written by toolbox export" in result.output
    assert foreign.read_bytes() == b"mine"
    ours = tmp_path / "model.pt"
    assert runner.invoke(app, ["export", str(folder_run), "--format", "torchscript", "--out", str(ours)]).exit_code == 0
    before = ours.stat().st_ino
    assert runner.invoke(app, ["export", str(folder_run), "--format", "torchscript", "--out", str(ours)]).exit_code == 0
    assert ours.stat().st_ino != before  # its own export it may replace (atomically: a new file)
    export.sidecar_path(ours).write_text("{}")  # a sidecar that is not ours any more
    result = runner.invoke(app, ["export", str(folder_run), "--format", "torchscript", "--out", str(ours)])
    assert result.exit_code == 2 and export.sidecar_path(ours).read_text() == "{}"


def test_an_unknown_format_is_one_sentence(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path), "--format", "tflite", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "--format tflite is not known; use one of onnx, torchscript." in result.output
    assert list(tmp_path.iterdir()) == []
