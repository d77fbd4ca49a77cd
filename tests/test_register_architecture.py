"""examples/register_architecture.py: a backbone registered in timm from outside, run through the pipeline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
import timm
import torch

from toolbox.sparsity import channels as ch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "register_architecture.py"


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    """The example imported from its file (registers ``cifar_vgg11_bn``); forgotten afterwards."""
    spec = importlib.util.spec_from_file_location("register_architecture", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["register_architecture"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("register_architecture", None)


def test_registered_model_behaves_like_a_timm_model(example: ModuleType) -> None:
    assert "cifar_vgg11_bn" in timm.list_models("cifar_*")
    model = timm.create_model("cifar_vgg11_bn", num_classes=7, in_chans=1, width=0.125)
    assert model.default_cfg["input_size"] == (3, 32, 32) and model.num_features == 64
    x = torch.randn(2, 1, 16, 16)
    features = model.forward_features(x)
    assert features.shape[1] == model.num_features
    assert model.forward_head(features).shape == (2, 7)
    assert model.forward_head(features, pre_logits=True).shape == (2, 64)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    stages = timm.create_model("cifar_vgg11_bn", features_only=True, width=0.125)(torch.randn(1, 3, 32, 32))
    assert [s.shape[1] for s in stages] == [8, 16, 32, 64, 64]
    graph = ch.channel_groups(timm.create_model("cifar_vgg11_bn", width=0.125))
    assert len(graph.groups) == 8 and not graph.skipped  # every conv-BN pair is a prunable group


def test_the_papers_pipeline_runs_on_it(example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = example.main(["--width", "0.125", "--device", "cpu", "--out", str(tmp_path / "run")])
    phases = [[p["phase"] for p in s["phases"]] for s in results["steps"]]
    assert phases == [["learn", "sparsify"], ["learn", "sparsify"], ["learn"]]
    assert results["config"]["arch"] == "cifar_vgg11_bn"
    for step in results["steps"][:2]:
        assert step["sparsity"] == pytest.approx(0.5, abs=0.02)
        assert step["phases"][1]["sparsity_target_reached"] == 1
    assert "step 3: top-1" in capsys.readouterr().out
