"""A run that does not learn says so, with what to try (issue 28, "defaults that learn")."""

from __future__ import annotations

from pathlib import Path

from fabricate import write_image_folder
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.run.engine import near_chance

runner = CliRunner()


def test_near_chance_is_a_tenth_of_the_way_from_chance() -> None:
    assert near_chance(33.4, 3) and near_chance(39.9, 3) and not near_chance(40.1, 3)
    assert near_chance(18.9, 10) and not near_chance(19.1, 10)


def test_a_run_on_noise_ends_with_the_warning(tmp_path: Path) -> None:
    for split, seed in (("train", 1), ("test", 2)):  # random pixels: nothing to learn
        write_image_folder(tmp_path / "data" / split, ("ant", "bee", "cat"), per_class=8, size=(16, 16), seed=seed)
    result = runner.invoke(app, ["run", "--dataset", "imagefolder", "--data-root", str(tmp_path / "data"),
                                 "--steps", "1", "--epochs", "1", "--batch-size", "8", "--image-size", "16",
                                 "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "The model did not learn: training top-1" in result.output
    assert "chance is 33.3 %; try more epochs (--epochs, now 1)" in result.output
