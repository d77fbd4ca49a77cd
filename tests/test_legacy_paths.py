"""The flat import paths of 0.2 (``toolbox.channels``, ...) still work for one release, with a
warning, and the project's own code uses none of them."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from toolbox import _legacy

ROOT = Path(__file__).resolve().parents[1]
OLD = "|".join(sorted(_legacy.MOVED, key=len, reverse=True))
OLD_PATH = re.compile(rf"(?<![\w/])toolbox\.({OLD})(?!\w)|^\s*from toolbox import [^\n#]*\b({OLD})\b", re.M)


def test_an_old_path_gives_the_same_module_with_a_warning() -> None:
    sys.modules.pop("toolbox.channels", None)
    with pytest.warns(DeprecationWarning, match="toolbox.channels is deprecated.*import toolbox.sparsity.channels"):
        old = importlib.import_module("toolbox.channels")
    new = importlib.import_module("toolbox.sparsity.channels")
    assert old is new
    assert new.__spec__.name == "toolbox.sparsity.channels"  # the alias does not rename the module


def test_every_old_path_imports_in_a_fresh_process() -> None:
    """``from toolbox import distill`` and ``import toolbox.batchnorm`` style, each old name once."""
    lines = [f"import toolbox.{old}" for old in _legacy.MOVED] + [
        "from toolbox import channels, distill, capabilities",
        "from toolbox.plugin_manager import load_plugins, make_manager, register",
        "from toolbox.sparsity import SparsityTraining, Units",
        "from toolbox.run import start_run, resume_run",
        "assert toolbox.distributed.is_main()",
    ]
    script = "import warnings; warnings.simplefilter('error', DeprecationWarning)\nimport toolbox\n" \
             "warnings.simplefilter('ignore', DeprecationWarning)\n" + "\n".join(lines)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_project_uses_no_old_path() -> None:
    offenders = []
    for top in ("toolbox", "plugins", "tests", "benchmarks", "examples", "docs"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix in {".py", ".md"} and path.name != "_legacy.py" and path != Path(__file__):
                text = path.read_text()
                offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in OLD_PATH.finditer(text)]
    assert offenders == []


def test_a_plugin_written_against_the_old_paths_runs(tmp_path: Path, tiny_values: dict) -> None:
    """A third-party plugin module of 0.2 (flat imports) loads with a warning and trains."""
    (tmp_path / "old_style_plugin.py").write_text(
        "import torch\n"
        "from toolbox.hookspecs import hookimpl\n"
        "from toolbox.channels import unwrap\n"
        "from toolbox.distill import kd_loss\n"
        "from toolbox import distributed\n\n"
        "class OldStyle:\n"
        "    calls = 0\n\n"
        "    @hookimpl\n"
        "    def toolbox_loss(self, ctx, batch, logits):\n"
        "        OldStyle.calls += 1\n"
        "        assert unwrap(ctx.model) is ctx.model and distributed.is_main()\n"
        "        return {'old_kd': 0.0 * kd_loss(logits, logits.detach(), 4.0)}\n")
    sys.path.insert(0, str(tmp_path))
    for old in _legacy.MOVED:
        sys.modules.pop(f"toolbox.{old}", None)  # imported by another test: warn again
    try:
        with pytest.warns(DeprecationWarning, match="is deprecated and goes away") as caught:
            module = importlib.import_module("old_style_plugin")
        assert {str(w.message).split()[0] for w in caught} == {"toolbox.channels", "toolbox.distill",
                                                               "toolbox.distributed"}
        from toolbox.run import start_run

        results = start_run({**tiny_values, "steps": 2}, extra_plugins={"old_style": module.OldStyle()}).execute()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("old_style_plugin", None)
    assert module.OldStyle.calls > 0 and len(results["steps"]) == 2
