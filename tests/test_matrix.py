"""Every usable built-in plugin combination on every data source, through the CLI (issue 28).

Sources: the built-in synthetic set, ``--dataset imagefolder --train/--test``, and ``--shards D1,D2
--test T`` followed by ``toolbox step RUN --data D3`` and by a ``--resume`` after a kill. Then
every read command on every file kind of a ``--shards`` run. Tiny on purpose (8 x 8 images, 3
classes, one epoch): the whole file takes well under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_process import toolbox_cli
from fabricate import write_image_folder
from typer.testing import CliRunner, Result

from toolbox.cli.commands import app

COMBOS = ["finetune", "joint", "lwf", "ewc", "scratch", "shrink_perturb", "sst,aod,msl", "slimming,aod,msl",
          "sst,aod,msl,prune"]
TINY = ["--epochs", "1", "--batch-size", "8", "--eval-batch-size", "64", "--threads", "1", "--arch",
        "cifar_resnet20", "--device", "cpu", "--seed", "0"]
runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Step folders D1, D2, D3, a test folder T and a training folder: 3 classes of 8 x 8 images."""
    root = tmp_path_factory.mktemp("folders")
    for seed, name in enumerate(["D1", "D2", "D3", "T", "train"]):
        write_image_folder(root / name, classes=("ant", "bee", "cat"), per_class=8 if name == "train" else 4,
                           size=(8, 8), seed=seed)
    return root


def source_flags(source: str, root: Path) -> list[str]:
    """The data flags of ``source``."""
    if source == "synthetic":
        return ["--dataset", "synthetic", "--steps", "2", "--per-class", "2"]
    if source == "imagefolder":
        return ["--dataset", "imagefolder", "--train", str(root / "train"), "--test", str(root / "T"),
                "--steps", "2", "--image-size", "8"]
    return ["--shards", f"{root / 'D1'},{root / 'D2'}", "--test", str(root / "T"), "--image-size", "8"]


def invoke(*args: str) -> Result:
    """``toolbox ARGS`` in-process; it must exit 0 without an exception."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0 and result.exception is None, (args, result.output[-2000:], result.exception)
    assert "Traceback" not in result.output
    return result


def refused(*args: str) -> str:
    """``toolbox ARGS`` in-process must exit 2 with one sentence (no traceback); return it."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, (args, result.output[-2000:], result.exception)
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("Error: "), result.output
    return message[0]


def phase_images(run_dir: Path) -> list[int]:
    """The ``images`` of every learn phase in results.json, step by step."""
    steps = json.loads((run_dir / "results.json").read_text())["steps"]
    return [phase["images"] for step in steps for phase in step["phases"] if phase["phase"] == "learn"]


@pytest.mark.parametrize("source", ["synthetic", "imagefolder", "shards"])
@pytest.mark.parametrize("combo", COMBOS)
def test_combination_runs_on_every_source(combo: str, source: str, folders: Path, tmp_path: Path) -> None:
    """The run finishes; a ``--shards`` run also takes one more step with ``toolbox step``."""
    run_dir = tmp_path / "run"
    invoke("run", "--plugins", combo, *source_flags(source, folders), *TINY, "--out", str(run_dir))
    if source == "shards":
        invoke("step", str(run_dir), "--data", str(folders / "D3"))
        assert len(json.loads((run_dir / "results.json").read_text())["steps"]) == 3


@pytest.mark.parametrize("combo", COMBOS)
def test_shards_run_resumes_after_a_kill(combo: str, folders: Path, tmp_path: Path) -> None:
    """Killed right after step 1's learn checkpoint is written, ``--resume`` finishes the run."""
    run_dir = tmp_path / "run"
    killed = toolbox_cli("run", "--plugins", combo, *source_flags("shards", folders), *TINY, "--out", str(run_dir),
                         kill_at="after-write:step1_learn.pt")
    assert killed.returncode == -9 and "Traceback" not in killed.stderr, killed.stderr[-2000:]
    invoke("run", "--resume", str(run_dir))
    assert len(json.loads((run_dir / "results.json").read_text())["steps"]) == 2


def test_baselines_see_the_step_folders_as_shards(folders: Path, tmp_path: Path) -> None:
    """finetune trains on the new folder only; joint on every step folder still present."""
    for name in ("D1", "D2", "D3"):
        shutil.copytree(folders / name, tmp_path / name)
    flags = ["--shards", f"{tmp_path / 'D1'},{tmp_path / 'D2'}", "--test", str(folders / "T"), "--image-size", "8"]
    invoke("run", "--plugins", "finetune", *flags, *TINY, "--out", str(tmp_path / "finetune"))
    assert phase_images(tmp_path / "finetune") == [12, 12]
    invoke("run", "--plugins", "joint", *flags, *TINY, "--out", str(tmp_path / "joint"))
    assert phase_images(tmp_path / "joint") == [12, 24]
    shutil.rmtree(tmp_path / "D1")  # step 3 then trains on D2 and D3
    invoke("step", str(tmp_path / "joint"), "--data", str(tmp_path / "D3"))
    assert phase_images(tmp_path / "joint") == [12, 24, 24]


def test_read_commands_on_every_file_kind(folders: Path, tmp_path: Path) -> None:
    """eval (phase checkpoint, serve file, a moved test folder), report, prune, check, plugins show."""
    run_dir, moved = tmp_path / "run", tmp_path / "moved_test"
    shutil.copytree(folders / "T", tmp_path / "T")
    invoke("run", "--plugins", "sst,aod,msl", "--shards", f"{folders / 'D1'},{folders / 'D2'}", "--test",
           str(tmp_path / "T"), "--image-size", "8", *TINY, "--out", str(run_dir))
    phase, serve = run_dir / "checkpoints" / "step1_sparsify.pt", run_dir / "serve" / "step2.pt"
    for path in (run_dir / "checkpoints" / "step2_learn.pt", phase, serve):
        assert "top-1" in invoke("eval", str(path), "--device", "cpu").output
    invoke("report", str(run_dir))
    invoke("prune", str(phase), "--out", str(tmp_path / "compact.pt"))
    assert "top-1" in invoke("eval", str(tmp_path / "compact.pt"), "--device", "cpu").output
    invoke("check", "--arch", "cifar_resnet20")
    invoke("plugins", "show", "sst")
    (tmp_path / "T").rename(moved)
    assert "--test DIR" in refused("eval", str(serve), "--device", "cpu")
    invoke("eval", str(serve), "--test", str(moved), "--device", "cpu")
    loose = tmp_path / "loose.pt"  # a serve file outside its run directory records no dataset
    shutil.copy(serve, loose)
    assert "--test DIR" in refused("eval", str(loose), "--device", "cpu")
    invoke("eval", str(loose), "--test", str(moved), "--device", "cpu")
    assert "--test" in refused("eval", str(serve), "--test", str(tmp_path / "nowhere"), "--device", "cpu")

