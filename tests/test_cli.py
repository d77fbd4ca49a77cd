"""The command line through typer's test runner: commands, output files, user errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolbox.cli.commands import app, parse_extra_args
from toolbox.errors import UsageError

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--arch", "cifar_resnet20", "--epochs", "1", "--batch-size", "64",
        "--device", "cpu"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_run_eval_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("run", "--plugins", "finetune", "--steps", "2", "--out", str(out), *TINY)
    assert result.exit_code == 0, result.output
    assert "step" in result.output and (out / "results.json").is_file()
    result = invoke("eval", str(out / "checkpoints" / "step2_learn.pt"))
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output
    result = invoke("run", "--resume", str(out))
    assert result.exit_code == 0, result.output


def test_eval_normalizes_as_the_run_did(tmp_path: Path) -> None:
    import json

    from fabricate import write_fashion_mnist

    write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=40)
    out = tmp_path / "run"
    result = invoke("run", "--plugins", "finetune", "--steps", "1", "--per-class", "10", "--out", str(out),
                    "--dataset", "fashion_mnist", "--data-root", str(tmp_path / "fm"), "--mean", "0.9",
                    "--std", "0.05", "--epochs", "1", "--batch-size", "32", "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "results.json").read_text())["steps"][0]["phases"][0]
    result = invoke("eval", str(out / "checkpoints" / "step1_learn.pt"))
    assert result.exit_code == 0, result.output
    assert f"loss {record['test_loss']:.4f}" in result.output  # the recorded --mean/--std, not the dataset's


def test_config_file_and_flag_override(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("dataset: synthetic\nsteps: 3\nepochs: 1\nbatch_size: 64\ndevice: cpu\n")
    out = tmp_path / "run"
    result = invoke("run", "--config", str(config), "--steps", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "steps: 1" in (out / "config.yaml").read_text()


def test_train_one_phase_from_a_checkpoint(tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert invoke("train", "--out", str(first), *TINY).exit_code == 0
    second = tmp_path / "second"
    result = invoke("train", "--init", str(first / "checkpoints" / "step1_learn.pt"), "--out", str(second), *TINY)
    assert result.exit_code == 0, result.output
    assert (second / "checkpoints" / "step1_learn.pt").is_file()


def test_listings() -> None:
    result = invoke("plugins", "list")
    assert result.exit_code == 0 and "finetune" in result.output and "built-in" in result.output
    result = invoke("models", "list")
    assert result.exit_code == 0
    for name in ("cifar_resnet20", "cifar_resnet110", "cifar_mobilenetv2", "tinyimagenet_mobilenetv2"):
        assert name in result.output


@pytest.mark.parametrize("args,message", [
    (["--plugins", "nope"], "Unknown plugin 'nope'; known plugins:"),
    (["--arch", "resnet_9000"], "Unknown --arch 'resnet_9000'"),
    (["--dataset", "imagenet22k"], "imagenet22k"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--steps", "x"], "--steps must be an integer"),
    (["--config", "/nonexistent/c.yaml"], "Cannot read config file"),
    (["--bogus-flag", "3"], "Unknown option 'bogus_flag'"),
    (["stray"], "Unexpected argument 'stray'"),
])
def test_bad_input_exits_2_with_one_sentence(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("run", "--out", str(tmp_path / "r"), "--dataset", "synthetic", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_missing_dataset_says_where_it_looked(tmp_path: Path) -> None:
    result = invoke("run", "--dataset", "cifar100", "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "nodata" in result.output and "--data-root" in result.output


def test_eval_refuses_bad_checkpoints(tmp_path: Path) -> None:
    bogus = tmp_path / "x.pt"
    bogus.write_bytes(b"not a checkpoint")
    result = invoke("eval", str(bogus))
    assert result.exit_code == 2 and "Error:" in result.output and "Traceback" not in result.output


def test_parse_extra_args() -> None:
    assert parse_extra_args(["--s", "1e-3", "--ratio=0.5", "--flag", "--no-other"]) == {
        "s": "1e-3", "ratio": "0.5", "flag": "true", "other": "false"}
    with pytest.raises(UsageError):
        parse_extra_args(["loose"])


def test_seeds_make_subdirectories_and_a_report(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    result = invoke("run", "--seeds", "0,1", "--steps", "2", "--out", str(out), *TINY)
    assert result.exit_code == 0, result.output
    for seed in (0, 1):
        assert (out / f"seed{seed}" / "results.json").is_file()
    for name in ("report.md", "report.csv", "report.json", "top1_vs_step.png"):
        assert (out / name).is_file()
    assert "± " in (out / "report.md").read_text()
    # a kill of the second seed: resume finishes it
    (out / "seed1" / "checkpoints" / "step2_learn.pt").unlink()
    assert invoke("run", "--resume", str(out)).exit_code == 0
    again = invoke("report", str(out), "--out", str(tmp_path / "rep"))
    assert again.exit_code == 0 and (tmp_path / "rep" / "report.csv").is_file()


def test_run_on_a_fabricated_cifar100_folder(tmp_path: Path) -> None:
    from fabricate import write_cifar100

    write_cifar100(tmp_path / "data", train_per_class=4, test_per_class=1)
    out = tmp_path / "run"
    result = invoke("run", "--plugins", "finetune", "--arch", "cifar_resnet20", "--dataset", "cifar100",
                    "--data-root", str(tmp_path / "data"), "--steps", "4", "--epochs", "1",
                    "--batch-size", "64", "--device", "cpu", "--out", str(out))
    assert result.exit_code == 0, result.output
    import json

    results = json.loads((out / "results.json").read_text())
    assert len(results["steps"]) == 4 and results["config"]["dataset"] == "cifar100"
    assert [p["images"] for s in results["steps"] for p in s["phases"]] == [100] * 4


def test_check_command_and_run_refusal(tmp_path: Path) -> None:
    result = invoke("check", "--arch", "cifar_resnet20", "--dataset", "synthetic")
    assert result.exit_code == 0, result.output
    assert "verdict" in result.output and "reload" in result.output
    result = invoke("run", "--plugins", "sst,aod,msl", "--arch", "test_efficientnet_gn", "--dataset", "synthetic",
                    "--out", str(tmp_path / "r"), "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "has no BatchNorm layer" in result.output
    assert not (tmp_path / "r").exists()
