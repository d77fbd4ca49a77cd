"""Backbones from an installed package: every module named under the ``toolbox.models`` entry-point
group is imported before a model is built, so ``--arch`` finds it without ``--models-from``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from toolbox.cli.commands import app

runner = CliRunner()

BACKBONES = '''
"""A tiny backbone registered with timm, as a third-party package would ship it."""
import timm
from timm.models import register_model


@register_model
def tbpkg_resnet20(pretrained=False, **kwargs):
    """cifar_resnet20 under the package's own name."""
    return timm.create_model("cifar_resnet20", pretrained=pretrained, **kwargs)
'''


def fabricate_package(site: Path, package: str, module_text: str) -> None:
    """``package`` installed by hand into ``site``: the module plus a dist-info whose entry_points.txt
    declares ``[toolbox.models] backbones = <package>.backbones``."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("")
    (site / package / "backbones.py").write_text(module_text)
    dist = site / f"{package}-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[toolbox.models]\nbackbones = {package}.backbones\n")


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fabricated package on sys.path for one test; its modules are forgotten afterwards."""
    site = tmp_path / "site"
    fabricate_package(site, "tbpkg", BACKBONES)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m == "tbpkg" or m.startswith("tbpkg.")]:
        del sys.modules[name]


AGAIN = """
import json, sys
from typer.testing import CliRunner
from toolbox.cli.commands import app
run, image = sys.argv[1], sys.argv[2]
evaluated = CliRunner().invoke(app, ["eval", run + "/serve/step1.pt"])
predicted = CliRunner().invoke(app, ["predict", run, image])
print(json.dumps([evaluated.exit_code, evaluated.output, predicted.exit_code, predicted.output]))
"""


@pytest.mark.slow
def test_an_installed_backbone_trains_and_a_fresh_process_evaluates_and_predicts(installed: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--arch", "tbpkg_resnet20", "--dataset", "synthetic", "--steps", "1",
                                 "--epochs", "1", "--per-class", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "models_from: []" in (out / "config.yaml").read_text()  # nothing recorded: the package is found
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), *sys.path]),
           "COLUMNS": "400"}  # the table keeps a long tmp path on one line
    done = subprocess.run([sys.executable, "-c", AGAIN, str(out), str(image)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    eval_code, evaluated, predict_code, predicted = json.loads(done.stdout.strip().splitlines()[-1])
    assert eval_code == 0 and "tbpkg_resnet20 step 1" in evaluated, evaluated
    assert predict_code == 0 and "one.png" in predicted, predicted


def test_a_broken_entry_point_is_one_sentence_naming_package_and_entry_point(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    fabricate_package(site, "tbbroken", "raise RuntimeError('needs a GPU library')\n")
    monkeypatch.syspath_prepend(str(site))
    out = tmp_path / "run"
    try:
        result = runner.invoke(app, ["run", "--arch", "cifar_resnet20", "--dataset", "synthetic", "--steps", "1",
                                     "--epochs", "1", "--per-class", "2", "--out", str(out)])
    finally:
        sys.modules.pop("tbbroken", None)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1, message
    assert "tbbroken" in message and "backbones = tbbroken.backbones" in message and "needs a GPU library" in message
    assert not out.exists()
