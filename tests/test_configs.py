"""Every shipped config in examples/configs/ parses into valid run options (search spaces,
``space_*.yaml``, are checked in test_tune.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolbox.options import build_options, load_config_file
from toolbox.plugin_host.calls import declared_options
from toolbox.plugin_host.manager import dormant_options, load_plugins

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml")
                 if not p.name.startswith("space_"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path: Path) -> None:
    values = load_config_file(path)
    names = values.get("plugins", [])
    options = build_options(dict(values), declared_options(load_plugins(names)), dormant_options(names))
    assert options.steps in (2, 4) and options.epochs >= 1


def test_paper_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    for stem in ("cifar100_resnet110", "tinyimagenet_mobilenetv2"):
        assert {f"{stem}_single.yaml", f"{stem}_multi.yaml"} <= names
    assert "cpu_preset.yaml" in names
