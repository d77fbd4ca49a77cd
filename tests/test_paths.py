"""Paths that outlive the working directory: config.yaml records absolute folders, so `toolbox
step` works from anywhere (a cron job), and a moved test folder is given with --test."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from cli_process import toolbox_cli
from fabricate import write_image_folder

CLASSES = ("ant", "bee")
TINY = ["--arch", "cifar_resnet20", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "32",
        "--device", "cpu", "--threads", "1", "--image-size", "16"]


def test_relative_folders_are_recorded_absolute_and_step_runs_from_elsewhere(tmp_path: Path,
                                                                               monkeypatch) -> None:
    for k, name in enumerate(("d1", "d2", "d3", "d4")):
        write_image_folder(tmp_path / name, CLASSES, per_class=4, size=(16, 16), seed=10 + k)
    write_image_folder(tmp_path / "test", CLASSES, per_class=3, size=(16, 16), seed=99)
    monkeypatch.chdir(tmp_path)
    done = toolbox_cli("run", "--shards", "d1,d2", "--test", "test", "--out", "run", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["test"] == str(tmp_path / "test") and config["out"] == str(tmp_path / "run")
    assert config["shards"] == [str(tmp_path / "d1"), str(tmp_path / "d2")]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = toolbox_cli("step", str(tmp_path / "run"), "--data", str(tmp_path / "d3"))
    assert done.returncode == 0, done.stderr[-2000:]

    shutil.move(tmp_path / "test", tmp_path / "moved-test")
    done = toolbox_cli("step", str(tmp_path / "run"), "--data", str(tmp_path / "d4"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"The run's test folder {tmp_path / 'test'} does not exist (moved or deleted); pass its new place " \
           "with --test DIR" in done.stderr
    done = toolbox_cli("step", str(tmp_path / "run"), "--data", str(tmp_path / "d4"), "--test", "../moved-test")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"the test folder is now {tmp_path / 'moved-test'}" in done.stderr
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["test"] == str(tmp_path / "moved-test") and config["steps"] == 4
    assert f"4 step folders, test {tmp_path / 'moved-test'}" in (tmp_path / "run" / "results.md").read_text()
