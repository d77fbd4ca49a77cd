"""Bad input is one sentence, exit code 2, and nothing written; an unexpected error is one line, exit
code 1, naming the file that holds its traceback (issue 28)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fabricate import write_image, write_image_folder
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.data.imagefolder import load_image_folders
from toolbox.hookspecs import hookimpl
from toolbox.models import build_model
from toolbox.run import log_file
from toolbox.run import start as run_start
from toolbox.storage import checkpoint as ckpt

runner = CliRunner()
TINY = ["--steps", "1", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "16", "--device", "cpu",
        "--threads", "1"]


def refused(args: list[str], *expected: str, out: Path | None = None) -> str:
    """Run the CLI: exit 2, one ``Error:`` line holding ``expected``, no traceback, ``out`` not created."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for text in expected:
        assert text in errors[0], errors[0]
    assert out is None or not out.exists(), sorted(out.rglob("*"))
    return errors[0]


def image_root(root: Path, per_class: int = 4) -> Path:
    """``root/train`` (``per_class`` images of ant and bee) and ``root/test`` (one each)."""
    write_image_folder(root / "train", per_class=per_class)
    write_image_folder(root / "test", per_class=1, seed=1)
    return root


def folder_run(root: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "imagefolder", "--data-root", str(root), "--out", str(out), *TINY, *extra]


@pytest.mark.parametrize("link,target,named", [("self.png", "self.png", "Too many levels of symbolic links"),
                                               ("sub", ".", "links back to a folder above it")])
def test_symbolic_link_loops_in_an_image_folder(tmp_path: Path, link: str, target: str, named: str) -> None:
    root = image_root(tmp_path / "data")
    os.symlink(target, root / "train" / "ant" / link)
    out = tmp_path / "run"
    refused(folder_run(root, out), named, str(root / "train" / "ant" / link), "remove", out=out)


def constant_channel_folders(train: Path, test: Path, size: int, channel: int, value: int) -> None:
    """RGB class folders whose training images all have ``value`` in ``channel`` (std 0 there)."""
    paths = write_image_folder(train, per_class=3, size=(size, size), rgb=True)
    write_image_folder(test, per_class=1, size=(size, size), rgb=True, seed=1)
    for path in paths:
        pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[..., channel] = value
        write_image(path, pixels)


def test_a_constant_channel_is_refused_before_the_run_directory(tmp_path: Path) -> None:
    root = tmp_path / "data"
    constant_channel_folders(root / "train", root / "test", size=32, channel=1, value=9)  # green: std 0
    out = tmp_path / "run"
    refused(folder_run(root, out), "Channel 2 of 3", "constant", "--mean/--std", "--std", out=out)


def test_non_utf8_names_are_named_and_skipped_with_skip_bad_images(tmp_path: Path) -> None:
    root = image_root(tmp_path / "data")
    ant = os.fsencode(root / "train" / "ant")
    os.rename(os.path.join(ant, b"img0.png"), os.path.join(ant, b"bad\xff.png"))
    out = tmp_path / "run"
    refused(folder_run(root, out), "train/ant/bad\\xff.png", "not valid UTF-8", "--skip-bad-images", out=out)
    images = load_image_folders([root / "train"], skip_bad_images=True)
    assert images.y.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert len(images.skipped) == 1 and "bad\\xff.png" in images.skipped[0]


def test_a_non_utf8_class_folder_is_named(tmp_path: Path) -> None:
    root = image_root(tmp_path / "data")
    for split in ("train", "test"):
        os.rename(root / split / "bee", os.path.join(os.fsencode(root / split), b"be\xffe"))
    out = tmp_path / "run"
    refused(folder_run(root, out, "--skip-bad-images"), "class folder named 'be\\xffe'", "rename it", out=out)


def test_val_per_class_holding_out_every_image(tmp_path: Path) -> None:
    root = image_root(tmp_path / "data")
    out = tmp_path / "run"
    refused(folder_run(root, out, "--val-per-class", "4"), "--val-per-class 4", "of the 4 training images",
            "--val-per-class 3 or less", out=out)


@pytest.mark.parametrize("flag,value", [("--seed", "9223372036854775000"), ("--seed", str(2**64)),
                                        ("--seeds", "0,4294967296")])
def test_seeds_out_of_range(tmp_path: Path, flag: str, value: str) -> None:
    out = tmp_path / "run"
    refused(["run", "--dataset", "synthetic", "--out", str(out), *TINY, flag, value],
            f"{flag} got {value}", "at most 4294967295", out=out)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a file descriptor's file")
def test_full_disk_when_the_lock_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name == "run.lock":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    out = tmp_path / "run"
    refused(["run", "--dataset", "synthetic", "--out", str(out), *TINY, "--per-class", "2"],
            f"Cannot write the run directory {out}", "No space left on device", "--out", out=out)


def _checkpoint(path: Path, options: dict[str, Any]) -> Path:
    model = build_model("cifar_resnet20", 10, 3)
    torch.save(ckpt.make_checkpoint(model, arch="cifar_resnet20", num_classes=10, in_chans=3, model_kwargs={},
                                    step=1, phase="learn", masks={}, records={}, options=options, results=[]), path)
    return path


def test_eval_batch_size_zero(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "model.pt", {"dataset": "synthetic"})
    refused(["eval", str(path), "--batch-size", "0", "--device", "cpu"], "--batch-size must be at least 1, got 0")


def test_eval_of_a_checkpoint_whose_options_have_a_wrong_type(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "model.pt", {"dataset": "synthetic", "per_class": "x"})
    refused(["eval", str(path), "--device", "cpu"], str(path), "recorded option per_class 'x'")


def _results(run: Path, seed: int, text: str | None = None) -> None:
    run.mkdir(parents=True)
    config = {"plugins": [], "seed": seed, "arch": "a", "dataset": "d", "steps": 1, "out": str(run)}
    steps = [{"step": 1, "top1": 50.0 + seed, "top5": 90.0, "train_seconds": 1.0, "phases": []}]
    (run / "results.json").write_text(text if text is not None else json.dumps({"config": config, "steps": steps}))


def test_report_leaves_out_a_corrupt_or_empty_results_json(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _results(runs / "a", 0)
    _results(runs / "b", 1, "[]")
    _results(runs / "c", 2, '{"config": ')
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    for bad in ("b", "c"):
        assert f"Left out {runs / bad / 'results.json'}" in result.output
    assert json.loads((tmp_path / "report" / "report.json").read_text())["runs"] == [str(runs / "a")]


def test_report_into_a_folder_that_is_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    _results(runs / "a", 0)
    real = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:  # works as root too
        if flags & os.O_CREAT and Path(os.fsdecode(path)).resolve().parent == runs.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    message = refused(["report", str(runs)], f"Cannot write the report into {runs}", "not writable",
                      "pass a writable --out")
    assert "--resume" not in message
    assert sorted(p.name for p in runs.iterdir()) == ["a"]


class Boom:
    """A plugin with a bug: its phase start raises."""

    @hookimpl
    def toolbox_phase_start(self, ctx: Any) -> None:
        raise ZeroDivisionError("a bug in a plugin\nsecond line")


def test_an_unexpected_error_in_a_run_is_one_line_naming_run_log(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    load = run_start.load_plugins
    monkeypatch.setattr(run_start, "load_plugins", lambda names, extra=None: load(names, {"boom": Boom()}))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--dataset", "synthetic", "--out", str(out), *TINY, "--per-class", "2"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    log = (out / "run.log").resolve()
    assert errors == [f"Error: unexpected ZeroDivisionError: a bug in a plugin; the full traceback is in {log}"]
    logged = (out / "run.log").read_text()
    assert "Traceback (most recent call last)" in logged and "ZeroDivisionError: a bug in a plugin" in logged


def test_an_unexpected_error_outside_a_run_goes_to_a_crash_log(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from toolbox.run import results

    def broken(*args: Any) -> None:
        raise KeyError("no such key")

    monkeypatch.setattr(results, "write_comparison", broken)
    monkeypatch.setenv(log_file.CRASH_ENV, str(tmp_path / "crashes"))
    _results(tmp_path / "runs" / "a", 0)
    result = runner.invoke(app, ["report", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (crash,) = (tmp_path / "crashes").iterdir()
    assert result.output.strip().splitlines()[-1] == (f"Error: unexpected KeyError: 'no such key'; the full "
                                                      f"traceback is in {crash}")
    assert "Traceback (most recent call last)" in crash.read_text() and "KeyError: 'no such key'" in crash.read_text()


def test_a_constant_channel_in_the_first_step_folder_is_refused_before_the_run_directory(tmp_path: Path) -> None:
    root = tmp_path / "data"
    constant_channel_folders(root / "D1", root / "T", size=8, channel=2, value=200)  # blue: std 0
    out = tmp_path / "run"
    args = ["run", "--shards", str(root / "D1"), "--test", str(root / "T"), "--image-size", "8", "--out", str(out),
            *TINY[2:]]
    refused(args, "Channel 3 of 3", str(root / "D1"), "constant", "--std 0.", out=out)
    refused([*args, "--std", "0.2,0.2"], "--std gives 2 values", "3 channel(s)", out=out)
    assert runner.invoke(app, [*args, "--std", "0.2,0.2,0.2", "--plugins", "finetune"]).exit_code == 0
