"""Nothing lost, nothing overwritten: a user's folder is never a run directory, a diverged model
is never a finished phase, ``--resume`` applies the flags that may change and refuses the others,
and every finished step keeps its serve file whatever moment a kill picks."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_process import cli_flags as flags
from cli_process import toolbox_cli

from toolbox.errors import UsageError
from toolbox.run import directory as files
from toolbox.run import lock as runlock
from toolbox.run.start import resume_run, start_run
from toolbox.storage import atomic
from toolbox.storage import checkpoint as ckpt

TINY = {"dataset": "synthetic", "arch": "cifar_resnet20", "steps": 2, "epochs": 1, "batch_size": 64,
        "device": "cpu", "threads": 1, "seed": 0}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder``: its bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def strict(text: str) -> Any:
    """Parse JSON refusing NaN and Infinity, as strict parsers do."""
    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------- a user's folder


def user_folder(root: Path) -> Path:
    folder = root / "mine"
    for name, text in {"config.yaml": "mine: true\n", "results.md": "my notes\n", "notes.txt": "keep\n",
                       ".important.tmp": "draft\n", "checkpoints/step2_learn.pt": "not a checkpoint",
                       "serve/step1.pt": "my model", "checkpoints/.draft.tmp": "draft"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_run_into_a_users_folder_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    done = toolbox_cli("run", *flags(TINY), "--out", str(folder))
    assert done.returncode == 2, done.stderr
    assert f"--out {folder} already holds files and is not a toolbox run directory" in done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(folder) == before


def test_resume_of_a_users_folder_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    folder = user_folder(tmp_path)
    before = snapshot(folder)
    done = toolbox_cli("run", "--resume", str(folder))
    assert done.returncode == 2, done.stderr
    assert "is not a toolbox run directory" in done.stderr
    assert snapshot(folder) == before


def test_an_empty_folder_and_a_new_one_are_fine(tmp_path: Path) -> None:
    files.check_new_out(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    files.check_new_out(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        files.check_new_out(tmp_path / "file")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (sst,aod,msl, 2 steps)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    start_run({**TINY, "plugins": "sst,aod,msl", "out": str(out)}).execute()
    runlock.release_all()  # as the CLI does at the end of a command: other processes may open it
    return out


def test_a_run_directory_is_marked(finished: Path) -> None:
    marker = json.loads((finished / files.RUN_MARKER).read_text())
    assert marker["format"] == files.MARKER_FORMAT and marker["kind"] == "run"


def test_resume_removes_only_the_toolboxs_own_temp_files(finished: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    mine = [run / ".important.tmp", run / "checkpoints" / ".draft.tmp"]
    for path in mine:
        path.write_text("mine")
    ours = run / f".results.json{atomic.TEMP_MARK}x1y2{atomic.TEMP_SUFFIX}"
    ours.write_text("{")
    resume_run(run).execute()
    runlock.release_all()
    assert all(path.read_text() == "mine" for path in mine)
    assert not ours.exists()


def test_a_run_of_toolbox_02_without_marker_resumes(finished: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / files.RUN_MARKER).unlink()
    results = resume_run(run).execute()
    runlock.release_all()
    assert len(results["steps"]) == 2 and files.is_marked(run)


# ----------------------------------------------------------------------------- diverged models


def test_a_diverged_model_is_not_saved_and_resume_with_a_lower_lr_recovers(tmp_path: Path) -> None:
    out = tmp_path / "run"
    diverging = {**TINY, "epochs": 2, "batch_size": 512, "lr": 1e6}
    done = toolbox_cli("run", *flags(diverging), "--out", str(out))
    assert done.returncode == 1, done.stderr
    assert "The model diverged at the end of step 1 learn: the test loss is not finite" in done.stderr
    assert f"toolbox run --resume {out} --lr <lower>" in done.stderr and "Traceback" not in done.stderr
    assert not ckpt.phase_checkpoint_path(out, 1, "learn").exists()
    assert not (out / "serve").exists()
    partial = torch.load(ckpt.partial_checkpoint_path(out), weights_only=True)  # epoch 1: still finite
    assert all(torch.isfinite(t).all() for t in partial["state_dict"].values() if t.is_floating_point())
    resumed = toolbox_cli("run", "--resume", str(out), "--lr", "0.05")
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing with --lr 0.05 (was 1000000.0)" in resumed.stderr
    results = strict((out / "results.json").read_text())
    assert results["config"]["lr"] == 0.05 and len(results["steps"]) == 2
    assert all(math.isfinite(phase["test_loss"]) for step in results["steps"] for phase in step["phases"])
    assert (out / "serve" / "step1.pt").is_file() and (out / "serve" / "step2.pt").is_file()
    for line in (out / "metrics.jsonl").read_text().splitlines():
        strict(line)


def test_resume_refuses_flags_that_decide_what_is_trained(finished: Path) -> None:
    before = snapshot(finished)
    for flag, value, says in [("--seed", "3", "--seed cannot change when a run resumes"),
                              ("--arch", "cifar_resnet32", "--arch cannot change when a run resumes"),
                              ("--dataset", "fashion_mnist", "--dataset cannot change"),
                              ("--out", "elsewhere", "--out has no meaning with --resume")]:
        done = toolbox_cli("run", "--resume", str(finished), flag, value)
        assert done.returncode == 2 and says in done.stderr, (flag, done.stderr)
    assert snapshot(finished) == before  # a refusal writes nothing
    unchanged = toolbox_cli("run", "--resume", str(finished), "--seed", "0", "--arch", "cifar_resnet20")
    assert unchanged.returncode == 0, unchanged.stderr  # the recorded values themselves are fine


def test_strict_json_has_no_nan() -> None:
    assert atomic.json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": "x"}) == \
        '{"a": null, "b": [1.0, null], "c": "x"}'


# ----------------------------------------------------------------------------- serve files


@pytest.mark.parametrize("event", ["after-write:step1.pt", "after-write:step1_learn.pt",
                                   "after-write:step2_learn.pt"])
def test_a_kill_between_a_phases_files_loses_no_serve_file(finished: Path, tmp_path: Path, event: str) -> None:
    out = tmp_path / "run"
    killed = toolbox_cli("run", *flags({**TINY, "plugins": "sst,aod,msl"}), "--out", str(out), kill_at=event)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert toolbox_cli("run", "--resume", str(out)).returncode == 0
    for step in (1, 2):
        served = torch.load(out / "serve" / f"step{step}.pt", weights_only=True)
        reference = torch.load(finished / "serve" / f"step{step}.pt", weights_only=True)
        assert served["state_dict"].keys() == reference["state_dict"].keys()
        assert all(torch.equal(served["state_dict"][k], reference["state_dict"][k]) for k in served["state_dict"])


def test_a_missing_serve_file_is_written_again_on_resume(finished: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "serve" / "step1.pt").unlink()
    resume_run(run).execute()
    runlock.release_all()
    again = torch.load(run / "serve" / "step1.pt", weights_only=True)
    original = torch.load(finished / "serve" / "step1.pt", weights_only=True)
    assert all(torch.equal(again["state_dict"][k], original["state_dict"][k]) for k in original["state_dict"])
