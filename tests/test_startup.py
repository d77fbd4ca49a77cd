"""Start-up: ``toolbox --help`` and ``toolbox run --help`` answer without importing torch, timm,
optuna or matplotlib (the CLI imports them inside the commands that need them), and ``import
toolbox`` still registers the backbones the moment timm is imported."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "timm", "torchvision", "optuna", "matplotlib", "tensorboard")

PROBE = """
import contextlib, io, json, runpy, sys
sys.argv = ["toolbox", *sys.argv[1:]]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_module("toolbox.cli", run_name="__main__")
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def imported_by(*args: str) -> dict:
    """Exit code and heavy modules loaded by ``toolbox ARGS`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_pages_import_no_heavy_module() -> None:
    for args in (["--help"], ["run", "--help"], ["plugins", "--help"]):
        assert imported_by(*args) == {"code": 0, "heavy": []}, args


def test_plugins_list_reads_the_plugins_without_importing_them() -> None:
    # every built-in's description comes from its source (plugin_docs.source_docs), so no torch
    assert imported_by("plugins", "list") == {"code": 0, "heavy": []}


def test_a_plugin_without_readable_source_is_loaded_for_its_description() -> None:
    from toolbox.cli.plugin_docs import describe, source_docs

    assert source_docs("toolbox_plugins.sst:SST") is not None
    assert source_docs("toolbox_plugins.sst:NOT_A_CLASS") is None  # e.g. an instance: loaded instead
    assert source_docs("no_such_module_xyz:Plugin") is None
    assert describe("sst", "``sst``: Sparse training. More.", "Class doc.") == "Sparse training."


def test_import_toolbox_then_timm_registers_the_backbones() -> None:
    script = ("import sys, toolbox; assert 'timm' not in sys.modules and 'torch' not in sys.modules\n"
              "import timm; m = timm.create_model('cifar_resnet20', num_classes=3)\n"
              "print(type(m).__name__, toolbox.models.__name__)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CifarResNet", "toolbox.models"]
