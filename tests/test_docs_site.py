"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing page or
a docstring that mkdocstrings cannot find fails it) and has its generated pages: the API from the
docstrings, the command line from ``--help``, the results from BENCHMARKS.md."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or
                                  importlib.util.find_spec("mkdocstrings") is None,
                                  reason="mkdocs / mkdocstrings not installed (pip install -e '.[dev]')")
#: What a reader cannot follow: the project's internal issue numbers and its planning notes.
INTERNAL = re.compile(r"\bissues? ?#?\d+|\bFINDINGS\b|\bPAPER\.md|\bDESIGN\.md")
#: A path into the repository's own folders, as the pages name them (`examples/configs/demo.yaml`).
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:examples|benchmarks|tests|docs|toolbox|plugins|\.ci)/[\w./{},*-]*\w)")


def build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``python -m mkdocs build --strict`` of the project folder ``project`` into ``site`` (not ``-q``:
    a quiet build hides the warnings that ``--strict`` counts, and passes)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=180)


@needs_mkdocs
def test_the_site_builds_strictly_with_its_generated_pages(tmp_path: Path) -> None:
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    page = {name: (tmp_path / "site" / name / "index.html").read_text() for name in ("api", "cli", "benchmarks")}
    assert "toolbox_model_surgery" in page["api"] and "load_predictor" in page["api"]  # from the docstrings
    assert ":class:" not in page["api"]  # Sphinx roles dropped
    assert "Usage: toolbox predict" in page["cli"] and "--per-class" in page["cli"]  # from --help
    assert "img/accuracy_primary_tuned.png" in page["benchmarks"] and "docs/img" not in page["benchmarks"]
    assert (tmp_path / "site" / "img" / "accuracy_primary_tuned.png").exists()


@needs_mkdocs
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


def missing_paths(text: str) -> list[str]:
    """The repository paths ``text`` names that do not exist (``{a,b}`` and ``*`` patterns expanded)."""
    missing = []
    for path in REPO_PATH.findall(text):
        options = [path.replace(m.group(0), part) for m in [re.search(r"\{([^}]*)\}", path)] if m
                   for part in m.group(1).split(",")] or [path]
        if not any(list(ROOT.glob(o)) or (ROOT / (o + ".py")).exists() for o in options):
            missing.append(path)
    return missing


def test_the_pages_name_no_internal_issue_and_no_missing_file() -> None:
    internal = [f"{p.name}: {m.group(0)}" for p in PAGES for m in INTERNAL.finditer(p.read_text())]
    assert internal == []
    assert [f"{p.name}: {path}" for p in PAGES for path in missing_paths(p.read_text())] == []
    assert missing_paths("`examples/configs/demo.yaml` `benchmarks/records/acc-{bf16,fp32}/primary`") == []
    assert missing_paths("see `examples/gone.yaml` and tests/test_nothing.py") == ["examples/gone.yaml",
                                                                                   "tests/test_nothing.py"]


def test_the_cli_reference_is_every_commands_help_without_torch() -> None:
    probe = ("import sys, mkdocs_hooks; page = mkdocs_hooks.cli_reference()\n"
             "print(page.count('## toolbox '), page.count('Usage: toolbox'), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    headings, usages, torch_loaded = done.stdout.split()
    assert int(headings) >= 15 and int(usages) == int(headings) + 1  # toolbox --help, then every command
    assert torch_loaded == "False"
