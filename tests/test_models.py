"""Tests of the timm-registered CIFAR / Tiny-ImageNet backbones in ``toolbox.models``."""

from __future__ import annotations

from typing import Callable, Dict

import pytest
import timm
import torch
import torch.nn as nn
import torch_pruning as tp

import toolbox.models  # noqa: F401  (registers the models)
from toolbox.models import CifarResNet, MobileNetV2, list_toolbox_models

RESNETS = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110"]
MOBILENETS = ["cifar_mobilenetv2", "tinyimagenet_mobilenetv2"]
ALL_MODELS = RESNETS + MOBILENETS
FAST_MODELS = [name for name in ALL_MODELS if name != "cifar_resnet110"]  # resnet110: see below

torch.set_num_threads(min(2, torch.get_num_threads()))


def num_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def input_for(model: nn.Module, batch: int = 2, in_chans: int = 3) -> torch.Tensor:
    """Random batch at the model's default spatial input size."""
    _, height, width = model.pretrained_cfg["input_size"]
    return torch.randn(batch, in_chans, height, width)


def expected_resnet_params(depth: int, num_classes: int, in_chans: int, shortcut: str) -> int:
    """Parameter count of a CIFAR ResNet derived by hand (convs without bias, BN = 2 per channel)."""
    n = (depth - 2) // 6
    total = in_chans * 16 * 9 + 2 * 16  # stem conv + BN
    c_in = 16
    for width in (16, 32, 64):
        for block in range(n):
            cin = c_in if block == 0 else width
            total += cin * width * 9 + width * width * 9 + 4 * width  # two 3x3 convs + two BNs
            if shortcut == "B" and cin != width:
                total += cin * width + 2 * width  # 1x1 projection + BN
        c_in = width
    return total + 64 * num_classes + num_classes


# --------------------------------------------------------------------------- registry


def test_registry_lists_all_models() -> None:
    cifar = timm.list_models("cifar_*")
    for name in RESNETS + ["cifar_mobilenetv2"]:
        assert name in cifar
    assert "tinyimagenet_mobilenetv2" in timm.list_models("tinyimagenet_*")
    assert list_toolbox_models() == sorted(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_cfg(name: str) -> None:
    model = timm.create_model(name)
    size = 64 if name.startswith("tinyimagenet") else 32
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    assert model.default_cfg is model.pretrained_cfg
    assert model.num_classes == (200 if name.startswith("tinyimagenet") else 10)
    assert model.pretrained_cfg["classifier"] == model.get_classifier(name_only=True)
    expected_cls = CifarResNet if name in RESNETS else MobileNetV2
    assert isinstance(model, expected_cls)


def test_pretrained_weights_do_not_exist() -> None:
    with pytest.raises(ValueError):
        timm.create_model("cifar_resnet20", pretrained=True)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize("name", FAST_MODELS)
def test_forward_shape(name: str, in_chans: int) -> None:
    model = timm.create_model(name, num_classes=10, in_chans=in_chans).eval()
    with torch.no_grad():
        out = model(input_for(model, 2, in_chans))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_resnet110_tiny_forward() -> None:
    model = timm.create_model("cifar_resnet110", num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", FAST_MODELS)
def test_forward_features_and_head(name: str) -> None:
    model = timm.create_model(name, num_classes=10, drop_rate=0.2).eval()
    x = input_for(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        pre_logits = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(model.forward_head(feats), logits)
    expected_hw = 8 if name in RESNETS else 4
    assert feats.shape == (2, model.num_features, expected_hw, expected_hw)
    assert pre_logits.shape == (2, model.num_features)
    assert model.num_features == (64 if name in RESNETS else 1280)


def test_drop_rate_is_active_in_training_only() -> None:
    model = timm.create_model("cifar_resnet20", drop_rate=0.5)
    assert model.drop_rate == 0.5
    feats = torch.rand(4, 64, 8, 8) + 1.0
    model.train()
    pooled = model.forward_head(feats, pre_logits=True)
    assert (pooled == 0).any()  # dropout zeroed some features
    model.eval()
    assert not (model.forward_head(feats, pre_logits=True) == 0).any()


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenetv2"])
def test_reset_classifier(name: str) -> None:
    model = timm.create_model(name, num_classes=10).eval()
    x = input_for(model)
    model.reset_classifier(7)
    assert model.num_classes == 7
    assert model(x).shape == (2, 7)
    assert model.get_classifier().out_features == 7
    assert model.get_classifier() is getattr(model, "fc" if "resnet" in name else "classifier")
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_features_only() -> None:
    model = timm.create_model("cifar_resnet20", features_only=True)
    outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [16, 16, 32, 64]
    model = timm.create_model("cifar_mobilenetv2", features_only=True)
    assert [o.shape[-1] for o in model(torch.randn(1, 3, 32, 32))] == [32, 16, 8, 4]


# --------------------------------------------------------------------------- kwargs


def test_shortcut_kwarg_survives_create_model() -> None:
    model_a = timm.create_model("cifar_resnet56", shortcut="A")
    model_b = timm.create_model("cifar_resnet56")
    assert model_a.shortcut == "A" and model_b.shortcut == "B"
    names_a = {n for n, _ in model_a.named_modules()}
    assert "layer2.0.shortcut.0" not in names_a  # no projection conv in option A
    assert isinstance(model_b.get_submodule("layer2.0.shortcut.0"), nn.Conv2d)
    assert isinstance(model_b.get_submodule("layer1.0.shortcut"), nn.Identity)


def test_invalid_kwargs_raise() -> None:
    with pytest.raises(ValueError):
        timm.create_model("cifar_resnet20", shortcut="C")
    with pytest.raises(TypeError):
        timm.create_model("cifar_resnet20", shortcutt="A")
    with pytest.raises(TypeError):
        timm.create_model("cifar_mobilenetv2", not_a_kwarg=1)
    with pytest.raises(ValueError):
        timm.create_model("cifar_mobilenetv2", global_pool="max")


def test_generic_timm_kwargs_are_tolerated() -> None:
    timm.create_model("cifar_resnet20", global_pool="avg", drop_path_rate=None, drop_block_rate=0.0)
    with pytest.warns(UserWarning):
        timm.create_model("cifar_mobilenetv2", drop_path_rate=0.1)


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", RESNETS)
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_param_count_formula(name: str, shortcut: str) -> None:
    depth = int(name.removeprefix("cifar_resnet"))
    model = timm.create_model(name, num_classes=10, shortcut=shortcut)
    assert num_params(model) == expected_resnet_params(depth, 10, 3, shortcut)


@pytest.mark.parametrize(
    "name, shortcut, num_classes, in_chans, expected",
    [
        ("cifar_resnet20", "A", 10, 3, 269_722),
        ("cifar_resnet20", "B", 10, 3, 272_474),
        ("cifar_resnet20", "A", 10, 1, 269_434),
        ("cifar_resnet110", "A", 10, 3, 1_727_962),
        ("cifar_resnet110", "B", 10, 3, 1_730_714),
        ("cifar_resnet110", "A", 100, 3, 1_733_812),
        ("cifar_resnet110", "B", 100, 3, 1_736_564),
    ],
)
def test_resnet_param_count_exact(name: str, shortcut: str, num_classes: int, in_chans: int, expected: int) -> None:
    model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, shortcut=shortcut)
    assert num_params(model) == expected


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet56"])
def test_option_b_is_slightly_larger(name: str) -> None:
    count_a = num_params(timm.create_model(name, shortcut="A"))
    count_b = num_params(timm.create_model(name, shortcut="B"))
    # two projections: 16->32 and 32->64 (1x1 conv + BN each)
    assert count_b - count_a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64) == 2752


@pytest.mark.parametrize("name", MOBILENETS)
def test_mobilenetv2_param_count(name: str) -> None:
    # identical to torchvision.models.mobilenet_v2(num_classes=10): strides do not change parameters
    assert num_params(timm.create_model(name, num_classes=10)) == 2_236_682
    assert num_params(timm.create_model(name, num_classes=100)) == 2_236_682 + 90 * 1281


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenetv2"])
def test_every_conv_is_followed_by_bn(name: str) -> None:
    model = timm.create_model(name)
    modules = list(model.modules())
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    bns = [m for m in modules if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns)
    assert all(bn.weight.eq(1).all() and bn.bias.eq(0).all() for bn in bns)


def test_stable_module_names() -> None:
    resnet = dict(timm.create_model("cifar_resnet20").named_modules())
    for key in ("conv1", "bn1", "layer1.0.bn1", "layer2.0.shortcut.1", "layer3.2.conv2", "fc"):
        assert key in resnet
    mbv2 = dict(timm.create_model("cifar_mobilenetv2").named_modules())
    for key in ("conv_stem", "blocks.0.0.conv_dw", "blocks.2.0.bn1", "blocks.6.0.bn3", "conv_head", "classifier"):
        assert key in mbv2


def test_mobilenetv2_residuals() -> None:
    model = timm.create_model("cifar_mobilenetv2")
    skips = [block.has_skip for stage in model.blocks for block in stage]
    # 17 blocks; residual on every repeat after the first of a stage (16 and 320 stages have n=1)
    assert len(skips) == 17
    assert sum(skips) == 10


# --------------------------------------------------------------------------- torch-pruning


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet56", "cifar_mobilenetv2", "tinyimagenet_mobilenetv2"])
def test_dependency_graph_traces(name: str) -> None:
    model = timm.create_model(name, num_classes=10, shortcut="B") if name in RESNETS else timm.create_model(name)
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=input_for(model, 1))
    groups = list(graph.get_all_groups(ignored_layers=[model.get_classifier()], root_module_types=[nn.Conv2d]))
    assert groups


PRUNERS: Dict[str, Callable[[], tp.importance.Importance]] = {
    "meta": lambda: tp.importance.MagnitudeImportance(p=2),
    "bnscale": lambda: tp.importance.BNScaleImportance(),
}


@pytest.mark.parametrize("pruner_kind", list(PRUNERS))
@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenetv2"])
def test_pruned_model_still_runs(name: str, pruner_kind: str) -> None:
    kwargs = {"shortcut": "B"} if name in RESNETS else {}
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    before = num_params(model)
    pruner_cls = tp.pruner.MetaPruner if pruner_kind == "meta" else tp.pruner.BNScalePruner
    pruner = pruner_cls(
        model,
        input_for(model, 1),
        importance=PRUNERS[pruner_kind](),
        pruning_ratio=0.5,
        ignored_layers=[model.get_classifier()],
    )
    pruner.step()
    assert num_params(model) < 0.5 * before
    x = input_for(model)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    model.reset_classifier(5)  # picks up the pruned feature width
    with torch.no_grad():
        assert model(x).shape == (2, 5)
