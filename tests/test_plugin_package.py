"""The example third-party package (examples/plugin_package): install, discover, run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.errors import UsageError
from toolbox.plugin_host.manager import available_plugins
from toolbox.run.start import start_run

PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "plugin_package"


def _fabricate(source: Path, target: Path) -> None:
    """Install by hand: the package folder plus a dist-info with the pyproject's entry points."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    shutil.copytree(source / "toolbox_replay", target / "toolbox_replay")
    dist = target / f"toolbox_replay-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    points = project["entry-points"]["toolbox.plugins"]
    (dist / "entry_points.txt").write_text("[toolbox.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed (offline, no deps) into a temporary target directory."""
    root = tmp_path_factory.mktemp("plugin_package")
    source, target = root / "src", root / "site"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(source)],
                          capture_output=True, text=True, env=env, timeout=180)
    if proc.returncode != 0:  # e.g. no setuptools here: fall back to a hand-made dist-info
        warnings.warn(f"pip could not install the example package ({proc.stderr.strip()[-300:]}); "
                      "using a fabricated dist-info instead.")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        _fabricate(source, target)
    return target


@pytest.fixture
def installed(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The installed package on sys.path for one test; its modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m == "toolbox_replay" or m.startswith("toolbox_replay.")]:
        del sys.modules[name]


def test_entry_points_are_discovered_with_their_package(installed: Path) -> None:
    plugins = available_plugins()
    assert plugins["replay"].source == "toolbox-replay 0.1.0"
    assert plugins["l2bn"].source == "toolbox-replay 0.1.0"
    result = CliRunner().invoke(app, ["plugins", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = [row for row in result.output.splitlines() if " replay " in row][0]
    assert "toolbox-replay 0.1.0" in line and "Train step k on shard k plus a small" in line  # what it does
    shown = CliRunner().invoke(app, ["plugins", "show", "replay"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "data_schedule" in shown.output  # its hooks


def test_replay_buffer_and_l2_gradient_on_tiny_tensors(installed: Path) -> None:
    from toolbox_replay.regularize import add_l2_gamma_grad_
    from toolbox_replay.replay import replay_buffer

    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 2, 2])
    earlier = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 8])]
    buffer = replay_buffer(labels, earlier, 2, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[buffer]).tolist() == [2, 2, 1]  # class 2 has only one earlier image
    assert set(buffer.tolist()) <= {0, 1, 2, 3, 4, 5, 8}
    again = replay_buffer(labels, earlier, 2, torch.Generator().manual_seed(0))
    assert torch.equal(buffer, again)

    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
    bn.weight.grad = torch.ones(3)
    add_l2_gamma_grad_(nn.Sequential(bn), 0.1)
    assert torch.allclose(bn.weight.grad, torch.tensor([1.1, 0.8, 1.05]))


def test_toolbox_run_with_the_installed_plugins(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--plugins", "replay,l2bn", "--dataset", "synthetic", "--steps", "3", "--epochs", "1",
            "--batch-size", "64", "--lr", "0.05", "--out", str(out), "--device", "cpu",
            "--replay-per-class", "4", "--l2bn", "1e-3"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    steps = json.loads((out / "results.json").read_text())["steps"]
    images = [s["phases"][0]["images"] for s in steps]
    assert images == [200, 240, 240]  # 600 images in 3 shards; 4 per class x 10 classes replayed
    assert [s["phases"][0]["replay_images"] for s in steps] == [0, 40, 40]
    assert '"l2bn_term"' in (out / "metrics.jsonl").read_text()


def test_replay_refuses_a_second_data_schedule(installed: Path, tiny_values: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="replay and joint"):
        start_run({**tiny_values, "plugins": "replay,joint"})
