"""The served model with its preprocessing: the recipe in every serve file, ``toolbox.load_predictor``,
``toolbox predict`` and the plain torch + PIL snippet of docs/use-the-model.md reproduce a run's served top-1 on
images smaller than, equal to and larger than ``--image-size``, grey and colour."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fabricate import write_image
from PIL import Image
from typer.testing import CliRunner

import toolbox
from toolbox.cli.commands import app
from toolbox.data import normalize_batch
from toolbox.data.imagefolder import image_files, load_image_folders
from toolbox.data.recipe import make_recipe
from toolbox.deploy.model_file import resolve_model
from toolbox.deploy.predictor import ImageInputError
from toolbox.errors import UsageError
from toolbox.run import lock as runlock
from toolbox.run.serve_files import serve_checkpoint
from toolbox.storage import checkpoint as ckpt

runner = CliRunner()
SIZE = 16
CLASSES = ("ant", "bee", "cat")
#: (H, W, colour, suffix): smaller than, equal to and larger than SIZE, narrow, grey and colour.
SHAPES = [(12, 12, False, ".png"), (16, 16, True, ".png"), (24, 20, True, ".png"), (10, 30, False, ".png"),
          (40, 36, True, ".jpg"), (16, 16, False, ".png")]


def write_folder(root: Path, per_shape: int, seed: int) -> None:
    """``root/<class>/`` with images of every shape in :data:`SHAPES`; each class its own brightness."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        for i in range(per_shape):
            for j, (h, w, colour, suffix) in enumerate(SHAPES):
                base = rng.integers(0, 120, size=(h, w, 3) if colour else (h, w)) + 60 * c
                extra = {"quality": 95} if suffix == ".jpg" else {}
                write_image(root / name / f"{i}_{j}{suffix}", np.clip(base, 0, 255).astype(np.uint8), **extra)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny image-folder run (cifar_resnet20, 1 epoch) and its served step's top-1."""
    base = tmp_path_factory.mktemp("predictor")
    write_folder(base / "train", per_shape=3, seed=1)
    write_folder(base / "test", per_shape=1, seed=2)
    out = base / "run"
    result = runner.invoke(app, ["run", "--dataset", "imagefolder", "--train", str(base / "train"), "--test", str(base / "test"),
                                 "--out", str(out), "--image-size", str(SIZE), "--arch", "cifar_resnet20",
                                 "--steps", "1", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "64",
                                 "--device", "cpu", "--threads", "1", "--lr", "0.01"])
    runlock.release_all()
    assert result.exit_code == 0, result.output
    served = json.loads((out / "results.json").read_text())["steps"][0]["served"]
    return {"out": out, "test": base / "test", "top1": served["top1"], "base": base}


def labelled_files(test: Path) -> list[tuple[str, int]]:
    return [(path, c) for c, name in enumerate(CLASSES) for path in image_files(test / name)]


def test_the_serve_file_carries_its_recipe(run: dict[str, Any]) -> None:
    recipe = ckpt.load_checkpoint(run["out"] / "serve" / "step1.pt")["preprocessing"]
    assert recipe["channels"] == 3 and recipe["pillow_mode"] == "RGB"  # colour is the majority
    assert recipe["image_size"] == SIZE and recipe["geometry"] == "shrink-center-crop-pad"
    assert recipe["classes"] == list(CLASSES) and recipe["dataset"] == "imagefolder"
    assert len(recipe["mean"]) == len(recipe["std"]) == 3


def test_load_predictor_reproduces_the_served_top1(run: dict[str, Any]) -> None:
    predictor = toolbox.load_predictor(str(run["out"]))
    files = labelled_files(run["test"])
    predictions = predictor.predict([path for path, _ in files])
    top1 = 100.0 * sum(p.indices[0] == label for p, (_, label) in zip(predictions, files)) / len(files)
    assert abs(top1 - run["top1"]) < 0.01
    # the very inputs the run evaluated: the decoded test folder, normalized
    decoded = load_image_folders([run["test"]], list(CLASSES), SIZE, 3, what="test image")
    expected = normalize_batch(decoded.x, predictor.recipe["mean"], predictor.recipe["std"])
    assert torch.equal(predictor.preprocess([path for path, _ in files]), expected)


def test_toolbox_predict_prints_and_writes_the_served_top1(run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(run["out"]), str(run["test"]), "--out", str(out), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    printed = float(re.search(r"top-1 ([\d.]+)%", result.output).group(1))
    assert abs(printed - run["top1"]) < 0.01
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(CLASSES) * len(SHAPES) and all(row["error"] == "" for row in rows)
    assert abs(100.0 * sum(r["top1_class"] == r["label"] for r in rows) / len(rows) - run["top1"]) < 0.01
    assert all(float(r["top1_probability"]) >= float(r["top2_probability"]) for r in rows)
    # toolbox eval on the same folder prints the same top-1
    result = runner.invoke(app, ["eval", str(run["out"] / "serve" / "step1.pt"), "--test", str(run["test"]),
                                 "--device", "cpu"])
    assert f"top-1 {printed:.2f}%" in result.output, result.output


def docs_snippet() -> str:
    """The ``preprocess`` function of docs/use-the-model.md, as its source."""
    page = (Path(__file__).parent.parent / "docs" / "use-the-model.md").read_text()
    return next(block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "def preprocess(" in block)


def test_the_docs_snippet_reproduces_the_preprocessing(run: dict[str, Any]) -> None:
    namespace: dict[str, Any] = {}
    exec(docs_snippet(), namespace)  # noqa: S102 - the docs' own code
    data = torch.load(run["out"] / "serve" / "step1.pt", weights_only=True)
    files = labelled_files(run["test"])
    x = torch.stack([namespace["preprocess"](path, data["preprocessing"]) for path, _ in files])
    predictor = toolbox.load_predictor(str(run["out"] / "serve" / "step1.pt"))
    assert torch.allclose(x, predictor.preprocess([path for path, _ in files]), atol=1e-5)
    with torch.inference_mode():
        guesses = toolbox.load_model(str(run["out"] / "serve" / "step1.pt"))(x).argmax(1)
    top1 = 100.0 * sum(int(g) == label for g, (_, label) in zip(guesses, files)) / len(files)
    assert abs(top1 - run["top1"]) < 0.01


# ------------------------------------------------------------------------ unit tests on that model


def test_every_input_kind_gives_the_same_probabilities(run: dict[str, Any]) -> None:
    predictor = toolbox.load_predictor(str(run["out"]))
    grey, colour = (str(run["test"] / "ant" / f"0_{j}.png") for j in (0, 2))
    for path in (grey, colour):
        raw = Path(path).read_bytes()
        kinds = [path, Path(path), raw, io.BytesIO(raw), Image.open(path), np.asarray(Image.open(path))]
        probs = predictor.probabilities(kinds)
        assert probs.shape == (len(kinds), len(CLASSES))
        assert torch.allclose(probs, probs[:1].expand_as(probs), atol=0, rtol=0)
    array = np.stack([np.asarray(Image.open(colour))] * 2)  # a 4-D array is a batch
    assert len(predictor.predict(array)) == 2
    single = predictor.predict(colour, top_k=1)
    assert single.label == CLASSES[int(predictor.probabilities(colour).argmax())]


def test_top_k_is_ordered_and_capped(run: dict[str, Any]) -> None:
    predictor = toolbox.load_predictor(str(run["out"]))
    path = str(run["test"] / "bee" / "0_1.png")
    p = predictor.predict(path, top_k=5)
    probs = predictor.probabilities(path)[0]
    assert p.classes == [CLASSES[i] for i in probs.argsort(descending=True).tolist()]
    assert p.probabilities == sorted(p.probabilities, reverse=True) and len(p.classes) == 3
    assert abs(sum(p.probabilities) - 1) < 1e-5


def test_an_unreadable_image_is_an_error_row_never_a_crash(run: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    good = shutil.copy(run["test"] / "cat" / "0_0.png", folder / "a.png")
    (folder / "b.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(run["out"]), str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png"]
    assert rows[0]["error"] == "" and rows[0]["top1_class"] in CLASSES
    assert rows[1]["top1_class"] == "" and "b.png" in rows[1]["error"] and "UnidentifiedImageError" in rows[1]["error"]
    assert "1 image(s) could not be read" in result.output and not re.search(r"top-1 [\d.]+%", result.output)
    with pytest.raises(ImageInputError, match="b.png"):
        toolbox.load_predictor(str(run["out"])).predict(str(folder / "b.png"))
    result = runner.invoke(app, ["predict", str(run["out"]), str(good)])  # no --out: a table
    assert result.exit_code == 0 and "a.png" in result.output, result.output


def test_out_never_overwrites_a_file_the_toolbox_did_not_write(run: dict[str, Any], tmp_path: Path) -> None:
    mine = tmp_path / "mine.csv"
    mine.write_text("name,value\nx,1\n")
    image = str(run["test"] / "cat" / "0_0.png")
    result = runner.invoke(app, ["predict", str(run["out"]), image, "--out", str(mine)])
    assert result.exit_code == 2 and "was not written by toolbox predict" in result.output
    assert mine.read_text() == "name,value\nx,1\n"
    ours = tmp_path / "preds.csv"
    for _ in range(2):  # its own CSV may be written again
        assert runner.invoke(app, ["predict", str(run["out"]), image, "--out", str(ours)]).exit_code == 0


def test_a_run_directory_means_current_else_the_newest_step(run: dict[str, Any], tmp_path: Path) -> None:
    serve = tmp_path / "r" / "serve"
    serve.mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no served model"):
        resolve_model(tmp_path / "r")
    for k in (1, 2, 10):
        shutil.copy(run["out"] / "serve" / "step1.pt", serve / f"step{k}.pt")
    assert resolve_model(tmp_path / "r") == serve / "step10.pt"
    shutil.copy(serve / "step2.pt", serve / "current.pt")
    assert resolve_model(tmp_path / "r") == serve / "current.pt" == resolve_model(serve)
    assert resolve_model(serve / "step1.pt") == serve / "step1.pt"
    with pytest.raises(UsageError, match="does not exist"):
        resolve_model(tmp_path / "nothing")


def test_an_old_serve_file_without_the_recipe_loads(run: dict[str, Any], tmp_path: Path) -> None:
    data = ckpt.load_checkpoint(run["out"] / "serve" / "step1.pt")
    recipe = data.pop("preprocessing")
    ckpt.save_checkpoint(tmp_path / "old.pt", data)
    old = toolbox.load_predictor(str(tmp_path / "old.pt"))
    derived = {k: v for k, v in old.recipe.items() if k not in ("dataset", "source_images")}  # not recorded then
    assert derived == {k: v for k, v in recipe.items() if k in derived}
    path = str(run["test"] / "ant" / "0_4.jpg")
    assert torch.equal(old.probabilities(path), toolbox.load_predictor(str(run["out"])).probabilities(path))


def test_built_in_datasets_get_their_recipe() -> None:
    from toolbox.models import build_model

    model = build_model("cifar_resnet20", 10, 1)
    data = serve_checkpoint(model, None, compacted=False, arch="cifar_resnet20", num_classes=10, in_chans=1,
                            model_kwargs={}, step=1, phase="learn", input_size=(1, 32, 32), classes=None,
                            mean=(0.28,), std=(0.35,), dataset="fashion_mnist")
    recipe = data["preprocessing"]
    assert recipe["pillow_mode"] == "L" and recipe["image_size"] == 32 and recipe["classes"][0] == "T-shirt/top"
    assert "28 x 28" in recipe["source_images"]
    other = make_recipe(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.2,) * 3, classes=None, num_classes=100,
                        dataset="cifar100")
    assert other["classes"][:3] == ["0", "1", "2"] and other["pillow_mode"] == "RGB"
    drawn = make_recipe(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.2,) * 3, classes=None, num_classes=10,
                        dataset="synthetic")
    assert drawn["classes"][:2] == ["disc", "ring"]


def test_a_pruned_serve_file_keeps_its_recipe(run: dict[str, Any], tmp_path: Path) -> None:
    from toolbox.pruning.prune_file import prune_checkpoint

    serve = run["out"] / "serve" / "step1.pt"
    prune_checkpoint(serve, tmp_path / "small.pt", ratio=0.25, repeats=0)
    small = toolbox.load_predictor(str(tmp_path / "small.pt"))
    assert small.recipe == ckpt.load_checkpoint(serve)["preprocessing"]
    assert small.predict(str(run["test"] / "ant" / "0_0.png")).label in CLASSES
