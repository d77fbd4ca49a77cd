"""``--models-from FILE_OR_MODULE``: a backbone registered by a file of examples/ trains from the
command line, and ``--resume`` and ``eval`` (in a fresh process) import it again from config.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from toolbox.cli.app import parse_extra_args
from toolbox.cli.commands import app

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "register_architecture.py"
runner = CliRunner()

AGAIN = """
import json, sys
from typer.testing import CliRunner
from toolbox.cli.commands import app
run = sys.argv[1]
resumed = CliRunner().invoke(app, ["run", "--resume", run])
evaluated = CliRunner().invoke(app, ["eval", run + "/serve/step2.pt"])
print(json.dumps([resumed.exit_code, resumed.output[-400:], evaluated.exit_code, evaluated.output]))
"""


def test_a_backbone_from_a_file_trains_resumes_and_evaluates(tmp_path: Path) -> None:
    config = tmp_path / "vgg.yaml"
    config.write_text("model_kwargs: {width: 0.125}\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--config", str(config), "--arch", "cifar_vgg11_bn", "--models-from",
                                 str(EXAMPLE), "--dataset", "synthetic", "--steps", "2", "--epochs", "1",
                                 "--per-class", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["models_from"] == [str(EXAMPLE)]
    (out / "checkpoints" / "step2_learn.pt").unlink()  # so that --resume trains again
    done = subprocess.run([sys.executable, "-c", AGAIN, str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed_code, resumed, eval_code, evaluated = json.loads(done.stdout.strip().splitlines()[-1])
    assert resumed_code == 0 and "results:" in resumed, resumed
    assert eval_code == 0 and "cifar_vgg11_bn step 2 learn" in evaluated, evaluated


def test_a_missing_source_is_one_sentence_and_writes_nothing(tmp_path: Path) -> None:
    for source, says in (("no_such_module_xyz", "no such module or file"), (str(tmp_path / "nope.py"), "no such file")):
        out = tmp_path / "run"
        result = runner.invoke(app, ["run", "--arch", "cifar_resnet20", "--models-from", source, "--dataset",
                                     "synthetic", "--steps", "1", "--per-class", "2", "--out", str(out)])
        assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists()


def test_the_flag_is_repeatable() -> None:
    assert parse_extra_args(["--models-from", "a.py", "--models-from=b"]) == {"models_from": "a.py,b"}
