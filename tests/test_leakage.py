"""Nothing leaked: a folder twice in ``--shards``, test images that are training images, a
``toolbox step`` folder the run already trained on, validation images that are test or training
images: each refused (exit 2, one sentence, nothing written) unless ``--allow-overlap``; the
manifests the run keeps."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from fabricate import write_image_folder
from test_step import CLASSES, TINY, folders, steps_of
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.data.manifest import Manifest, check_new_folder

runner = CliRunner()


def refused(args: list[str]) -> str:
    """The one ``Error:`` line of a command that must exit with code 2."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def ok(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_a_folder_twice_in_shards_is_refused_unless_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (d1,) = folders(tmp_path / "data", 1)
    out = tmp_path / "run"
    args = ["run", "--shards", f"{d1},{d1}", "--test", str(tmp_path / "data" / "test"), "--out", str(out), *TINY,
            "--steps", "2"]
    message = refused(args)
    assert f"--shards names the folder {d1.resolve()} 2 times (steps 1, 2)" in message
    assert "--allow-overlap" in message and not out.exists()
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        ok([*args, "--allow-overlap"])
    assert "going on because of --allow-overlap" in caplog.text and len(steps_of(out)) == 2


def test_test_images_in_a_training_folder_are_refused_unless_allowed(tmp_path: Path) -> None:
    (d1,) = folders(tmp_path / "data", 1)
    same = tmp_path / "jan-copy"  # another name, the same images
    shutil.copytree(d1, same)
    out = tmp_path / "run"
    args = ["run", "--shards", str(d1), "--test", str(same), "--out", str(out), *TINY]
    message = refused(args)
    assert f"18 of the 18 images in the test folder {same.resolve()} are also in step 1's folder {d1.resolve()}" in message
    assert "same content, e.g. ant/img0.png" in message and not out.exists()
    ok([*args, "--allow-overlap"])
    assert "allow_overlap: true" in (out / "config.yaml").read_text() and len(steps_of(out)) == 1


def test_an_image_folder_run_with_its_test_set_in_training_is_refused(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "d" / "train", CLASSES, per_class=3, size=(20, 20))
    shutil.copytree(tmp_path / "d" / "train" / "bee", tmp_path / "d" / "test" / "bee")
    out = tmp_path / "run"
    args = ["run", "--dataset", "imagefolder", "--data-root", str(tmp_path / "d"), "--out", str(out), *TINY,
            "--steps", "1"]
    message = refused(args)
    assert "3 of the 3 images in the test folder" in message and "also in the training folder" in message
    assert not out.exists()
    ok([*args, "--allow-overlap"])


def test_a_step_folder_the_run_trained_on_is_refused_unless_allowed(tmp_path: Path) -> None:
    d1, d2 = folders(tmp_path / "data", 2)
    out = tmp_path / "run"
    ok(["run", "--shards", str(d1), "--test", str(tmp_path / "data" / "test"), "--out", str(out), *TINY])
    manifests = json.loads((out / "manifests.json").read_text())
    assert [s["step"] for s in manifests["steps"]] == [1] and len(manifests["test"]["files"]) == 12
    assert sorted(f[0] for f in manifests["steps"][0]["files"])[:2] == ["ant/img0.png", "ant/img1.png"]
    again = tmp_path / "mar"  # the January images under a new name
    shutil.copytree(d1, again)
    shutil.rmtree(d1)  # the run's manifest remembers them
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    message = refused(["step", str(out), "--data", str(again)])
    assert f"18 of the 18 images in the new folder {again.resolve()} were already trained on in step 1" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written
    ok(["step", str(out), "--data", str(again), "--allow-overlap"])
    assert len(steps_of(out)) == 2 and "allow_overlap: true" in (out / "config.yaml").read_text()
    ok(["step", str(out), "--data", str(d2)])  # new images: no refusal
    assert [s["step"] for s in json.loads((out / "manifests.json").read_text())["steps"]] == [1, 2, 3]


def test_a_folder_repeating_a_few_images_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    old = Manifest("/jan", [("a.png", 1, "h1"), ("b.png", 1, "h2")])
    new = Manifest("/mar", [("x.png", 1, "h1"), ("y.png", 1, "h3"), ("z.png", 1, "")])
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        check_new_folder(new, {1: old}, allow=False)  # 1 of 3: a warning
    assert "1 of the 3 images in the new folder /mar were already trained on in step 1" in caplog.text
    from toolbox.errors import UsageError

    with pytest.raises(UsageError, match="2 of the 3 images"):
        check_new_folder(Manifest("/apr", [("x", 1, "h1"), ("y", 1, "h2"), ("z", 1, "h9")]), {1: old}, allow=False)


def test_the_override_is_listed_in_the_help() -> None:
    result = runner.invoke(app, ["run", "--plugins", "sst", "--help"],
                           env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    (line,) = [line for line in result.output.splitlines() if " --allow-overlap " in line]
    assert "Warn instead of refusing" in line


def test_validation_images_that_are_test_or_training_images_are_refused(tmp_path: Path) -> None:
    d1, d2 = folders(tmp_path / "data", 2)
    test = tmp_path / "data" / "test"
    val = tmp_path / "val"
    write_image_folder(val, CLASSES, per_class=2, size=(20, 20), seed=55)
    shutil.copy(test / "bee" / "img1.png", val / "bee" / "from_test.png")
    out = tmp_path / "run"
    args = ["run", "--shards", f"{d1},{d2}", "--test", str(test), "--val", str(val), "--out", str(out), *TINY,
            "--steps", "2"]
    message = refused(args)
    assert (f"1 of the 7 images in the validation folder {val.resolve()} are also in the test folder {test.resolve()}"
            in message and "the promotion gate would judge on test images" in message and not out.exists())
    (val / "bee" / "from_test.png").unlink()
    shutil.copy(d2 / "cat" / "img0.png", val / "cat" / "from_d2.png")
    message = refused(args)
    assert f"also in step 2's folder {d2.resolve()}" in message and "count images the model trained on" in message
    assert not out.exists()
    (val / "cat" / "from_d2.png").unlink()
    ok(["run", "--shards", str(d1), "--test", str(test), "--val", str(val), "--out", str(out), *TINY, "--steps", "1"])
    d3 = tmp_path / "data" / "d3"  # a new month's folder that holds a validation image
    write_image_folder(d3, CLASSES, per_class=6, size=(20, 20), seed=77)
    shutil.copy(val / "ant" / "img0.png", d3 / "ant" / "from_val.png")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    message = refused(["step", str(out), "--data", str(d3)])
    assert f"validation folder {val.resolve()} are also in the new folder {d3.resolve()}" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
