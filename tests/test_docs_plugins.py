"""docs/plugins.md stays true: its examples install and run, and it covers every hook, field and built-in."""

from __future__ import annotations

import dataclasses
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest

from toolbox import hookspecs
from toolbox.cli.plugin_docs import description
from toolbox.context import Context
from toolbox.plugin_host.entry_points import available_plugins, load_entry_point
from toolbox.run.start import start_run

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "plugins.md").read_text()


def block(language: str, needle: str) -> str:
    """The fenced ``language`` code block of the guide that contains ``needle``."""
    found = [b for b in re.findall(rf"```{language}\n(.*?)```", DOC, re.S) if needle in b]
    assert len(found) == 1, f"expected one {language} block with {needle!r}"
    return found[0]


@pytest.fixture
def my_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The guide's two example plugins installed as the guide says: a package plus its entry points."""
    site = tmp_path / "site"
    package = site / "my_plugins"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "confidence.py").write_text(block("python", "class ConfidencePenalty"))
    (package / "log_sparsity.py").write_text(block("python", "class LogPenalty"))
    project = tomllib.loads(block("toml", "confidence ="))["project"]
    points = dict(project["entry-points"]["toolbox.plugins"])
    name, value = re.search(r'Registered as `(\w+) = "([\w.:]+)"`', DOC).groups()
    points[name] = value
    dist = site / f"my_plugins-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (dist / "entry_points.txt").write_text("[toolbox.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in [m for m in sys.modules if m == "my_plugins" or m.startswith("my_plugins.")]:
        del sys.modules[module]


def test_the_guides_examples_install_and_run(my_plugins: Path, tiny_values: dict[str, Any]) -> None:
    info = available_plugins()["confidence"]
    assert info.source == "my-plugins 0.1.0"
    what = description("confidence", load_entry_point("confidence"))
    assert f"confidence   my-plugins 0.1.0   {what}" in DOC  # the `plugins list` line shown
    values = {**tiny_values, "steps": 2, "plugins": "log_sparsity,aod,msl,confidence", "cp_beta": "0.2"}
    results = start_run(values).execute()
    sparsify = results["steps"][0]["phases"][1]
    assert sparsify["phase"] == "sparsify" and sparsify["sparsity_target_reached"] == 1
    metrics = (Path(tiny_values["out"]) / "metrics.jsonl").read_text()
    for key in ('"cp_penalty"', '"cp_entropy"', '"logsp_s"', '"logsp_ratio"'):
        assert key in metrics
    subgradient = {**values, "plugins": "log_sparsity", "logsp_mode": "subgradient", "logsp_s": "1e-3",
                   "out": str(Path(tiny_values["out"]).with_name("sub"))}
    assert start_run(subgradient).execute()["steps"][0]["phases"][1]["sparsity"] is not None


def test_the_guide_covers_every_hook_context_field_and_builtin() -> None:
    for name in dir(hookspecs):
        if name.startswith("toolbox_"):
            assert f"**`{name}(" in DOC, f"docs/plugins.md does not describe {name}"
    for field in dataclasses.fields(Context):
        if not field.name.startswith("_"):
            assert f"`{field.name}`" in DOC, f"docs/plugins.md does not list ctx.{field.name}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name in project["entry-points"]["toolbox.plugins"]:
        assert f"| `{name}` |" in DOC, f"docs/plugins.md does not list the built-in plugin {name}"
