"""One function names the classes: the step review's per-class record (results.md's update
table and results.json) and the serve file's recipe use the same names, the dataset's own
(Fashion-MNIST's "T-shirt/top", ..., a folder's class folders), never label numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fabricate import write_fashion_mnist, write_image_folder
from toolbox.cli.commands import app
from toolbox.data.class_names import DATASET_CLASSES, class_names
from toolbox.storage.checkpoint import load_checkpoint

runner = CliRunner()
TINY = ["--steps", "2", "--epochs", "1", "--arch", "cifar_resnet20", "--batch-size", "16", "--device", "cpu"]


def names_everywhere(out: Path) -> tuple[list[str], list[str], str]:
    """(the step-2 update's class names, the serve file's recipe classes, results.md) of a run."""
    update = json.loads((out / "results.json").read_text())["steps"][1]["update"]
    recipe = load_checkpoint(out / "serve" / "step2.pt")["preprocessing"]
    return list(update["per_class"]), recipe["classes"], (out / "results.md").read_text()


def test_a_fashion_mnist_run_names_its_classes_alike_in_results_and_serve_file(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=40)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--dataset", "fashion_mnist", "--data-root", str(tmp_path / "fm"),
                                 "--per-class", "8", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    reviewed, served, markdown = names_everywhere(out)
    assert reviewed == served == DATASET_CLASSES["fashion_mnist"]
    table = markdown.split("## What each step changed")[1]
    assert any(name in table for name in DATASET_CLASSES["fashion_mnist"]), table  # "most changed" by name


def test_a_folder_run_names_its_classes_alike_in_results_and_serve_file(tmp_path: Path) -> None:
    classes = ("ant", "bee", "cat", "dog", "eel", "fox")
    for split, per, seed in (("train", 12, 0), ("test", 4, 1)):
        write_image_folder(tmp_path / split, classes=classes, per_class=per, size=(16, 16), rgb=True, seed=seed)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--dataset", "imagefolder", "--train", str(tmp_path / "train"),
                                 "--test", str(tmp_path / "test"), "--image-size", "16", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    reviewed, served, markdown = names_everywhere(out)
    assert reviewed == served == list(classes)
    assert "| 2 |" in markdown.split("## What each step changed")[1]


@pytest.mark.parametrize("classes, num_classes, dataset, expected", [
    (["a", "b"], 2, "synthetic", ["a", "b"]),  # the data's own names first
    (None, 10, "fashion_mnist", DATASET_CLASSES["fashion_mnist"]),  # then the dataset's known names
    (None, 2, "fashion_mnist", ["0", "1"]),  # known names of another count: label numbers
    (None, 2, "cifar100", ["0", "1"]),
])
def test_class_names_prefers_the_data_then_the_dataset_then_numbers(classes, num_classes, dataset, expected) -> None:
    assert class_names(classes, num_classes, dataset) == expected
