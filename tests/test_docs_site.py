"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing page or
a docstring that mkdocstrings cannot find fails it) and has its generated pages: the API from the
docstrings, the command line from ``--help``, the results from BENCHMARKS.md."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or
                                importlib.util.find_spec("mkdocstrings") is None,
                                reason="mkdocs / mkdocstrings not installed (pip install -e '.[dev]')")


def build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``python -m mkdocs build --strict`` of the project folder ``project`` into ``site`` (not ``-q``:
    a quiet build hides the warnings that ``--strict`` counts, and passes)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=180)


def test_the_site_builds_strictly_with_its_generated_pages(tmp_path: Path) -> None:
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    page = {name: (tmp_path / "site" / name / "index.html").read_text() for name in ("api", "cli", "benchmarks")}
    assert "toolbox_model_surgery" in page["api"] and "load_predictor" in page["api"]  # from the docstrings
    assert ":class:" not in page["api"]  # Sphinx roles dropped
    assert "Usage: toolbox predict" in page["cli"] and "--per-class" in page["cli"]  # from --help
    assert "img/accuracy_primary_tuned.png" in page["benchmarks"] and "docs/img" not in page["benchmarks"]
    assert (tmp_path / "site" / "img" / "accuracy_primary_tuned.png").exists()


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    for name in ("mkdocs.yml", "BENCHMARKS.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copy(ROOT / "mkdocs_hooks.py", project / "mkdocs_hooks.py")
    home = project / "docs" / "index.md"
    home.write_text(home.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    done = build(project, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stdout + done.stderr
