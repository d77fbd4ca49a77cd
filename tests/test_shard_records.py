"""What a ``--shards`` run records about its folders (issue 28): the images ``--skip-bad-images``
left out of every step folder (also one ``toolbox step`` added) in data.json, and one decoded cache
per folder, however many passes read it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from fabricate import write_image_folder
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.data import decoded_cache

CLASSES = ("ant", "bee", "cat")
TINY = ["--plugins", "finetune", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "64", "--threads", "1",
        "--arch", "cifar_resnet20", "--device", "cpu", "--image-size", "8"]
runner = CliRunner()


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0 and result.exception is None, (result.output[-2000:], result.exception)


def folders(root: Path) -> Path:
    """Grayscale step folders D1, D2, D3 and a test folder T (3 classes of 8 x 8 images); D2 and D3
    hold one file each that is not an image."""
    for seed, name in enumerate(["D1", "D2", "D3", "T"]):
        write_image_folder(root / name, CLASSES, per_class=3, size=(8, 8), seed=seed)
    for name in ("D2", "D3"):
        (root / name / "bee" / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Counter[str]]:
    """A ``--shards D1,D2 --skip-bad-images`` run followed by ``toolbox step RUN --data D3``: its
    data folder, its run directory, and how often each folder was decoded into a cache entry."""
    root = folders(tmp_path_factory.mktemp("grown") / "data")
    run_dir = root.parent / "run"
    builds: Counter[str] = Counter()
    build = decoded_cache._build

    def counting(files, size, channels, entry, *rest):  # noqa: ANN001, ANN202 - a spy
        builds[Path(files.paths[0]).parents[1].name] += 1
        return build(files, size, channels, entry, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoded_cache, "_build", counting)
        invoke("run", "--shards", f"{root / 'D1'},{root / 'D2'}", "--test", str(root / "T"), "--skip-bad-images",
               *TINY, "--out", str(run_dir))
        invoke("step", str(run_dir), "--data", str(root / "D3"))
    return root, run_dir, builds


def test_images_left_out_of_every_step_folder_are_in_data_json(grown: tuple[Path, Path, Counter[str]]) -> None:
    root, run_dir, _ = grown
    record = json.loads((run_dir / "data.json").read_text())
    by_folder = record["skipped_by_folder"]
    assert list(by_folder) == ["test", "step 1", "step 2", "step 3"]
    assert by_folder["test"] == by_folder["step 1"] == []
    for step, name in ((2, "D2"), (3, "D3")):
        (left_out,) = by_folder[f"step {step}"]
        assert left_out.startswith(f"{root / name / 'bee' / 'broken.png'} (") and left_out.endswith(")"), left_out
    assert record["skipped_images"] == by_folder["step 2"] + by_folder["step 3"]


def test_each_folder_is_decoded_into_one_cache(grown: tuple[Path, Path, Counter[str]]) -> None:
    """The statistics pass (which chooses the channels), the leakage check and step 1's training
    pass all read D1's single entry."""
    root, _, builds = grown
    assert builds == {"D1": 1, "D2": 1, "D3": 1, "T": 1}, builds
    keys = sorted(p.name.split("-")[0] for p in (root / decoded_cache.CACHE_DIRNAME).glob("*.json"))
    assert keys == ["D1", "D2", "D3", "T"], keys
