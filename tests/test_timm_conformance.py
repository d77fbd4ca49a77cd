"""timm's own model checks (timm ``tests/test_models.py``), run on every model this project registers.

Each test mirrors one of timm's (named in its docstring) with the same assertions, at the
models' default input size (32x32 or 64x64, already below timm's size targets).  The model
list comes from timm's registry (names ``cifar_*`` and ``tinyimagenet_*``), so a new
registration is covered automatically; CIFAR ResNets run with both shortcut options.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import toolbox.models  # noqa: F401  (registers the models)
from toolbox.models import list_toolbox_models
from toolbox.models.cifar_resnet import SHORTCUT_OPTIONS

PREFIXES = ["cifar_*", "tinyimagenet_*"]
MODEL_NAMES = sorted(set(timm.list_models(PREFIXES)) | set(list_toolbox_models()))


def _cases(names: List[str]) -> List[Any]:
    """One pytest param per (model, constructor kwargs); CIFAR ResNets once per shortcut option."""
    cases = []
    for name in names:
        if timm.models.model_entrypoint(name).__module__ == "toolbox.models.cifar_resnet":
            cases += [pytest.param(name, {"shortcut": s}, id=f"{name}-{s}") for s in SHORTCUT_OPTIONS]
        else:
            cases.append(pytest.param(name, {}, id=name))
    return cases


ALL = _cases(MODEL_NAMES)


def _input(model: nn.Module, batch_size: int) -> torch.Tensor:
    """A random batch at the model's default input size."""
    return torch.randn(batch_size, *model.default_cfg["input_size"])


def _num_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def _check_feature_maps(outputs: List[torch.Tensor], info: FeatureInfo, x: torch.Tensor) -> None:
    """timm's feature checks: channels and reduction of each map match ``feature_info``."""
    channels, reductions = info.channels(), info.reduction()
    assert len(outputs) == len(channels)
    for expected, reduction, out in zip(channels, reductions, outputs):
        assert out.shape[1] == expected
        assert out.shape[2] <= math.ceil(x.shape[2] / reduction) + 1
        assert out.shape[3] <= math.ceil(x.shape[3] / reduction) + 1
        assert out.shape[0] == x.shape[0]
        assert not torch.isnan(out).any()


def _fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    """timm's ``_create_fx_model``: an FX feature extractor returning the model's output node."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


def test_every_toolbox_model_is_covered() -> None:
    assert set(list_toolbox_models()) <= set(MODEL_NAMES)
    assert len(ALL) == 12  # 5 ResNets x 2 shortcuts + 2 MobileNetV2s


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_forward(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_forward``: batch of 1, eval; grad checkpointing gives the same output."""
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    x = _input(model, 1)
    with torch.no_grad():
        outputs = model(x)
        assert outputs.shape[0] == 1
        assert not torch.isnan(outputs).any()
        model.set_grad_checkpointing()
        assert torch.allclose(outputs, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_backward(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_backward``: 42 classes, batch of 2, every parameter gets a gradient."""
    model = timm.create_model(name, pretrained=False, num_classes=42, **kwargs).train()
    outputs = model(_input(model, 2))
    outputs.mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"No gradient for {param_name}"
    assert sum(p.grad.numel() for p in model.parameters()) == _num_params(model)
    assert outputs.shape[-1] == 42
    assert not torch.isnan(outputs).any()


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_default_cfgs(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_default_cfgs``: feature shapes, pre-logits, classifier and pooling removal."""
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg
    pool_size = cfg["pool_size"]
    x = _input(model, 1)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[2:] == pool_size
        assert features.shape[1] == model.num_features
        assert pre_logits.shape[1] == model.head_hidden_size

        model.reset_classifier(0)  # no classifier: pooled features
        assert model.num_classes == 0
        outputs = model(x)
        assert outputs.shape == pre_logits.shape == (1, model.head_hidden_size)

        model.reset_classifier(0, "")  # no classifier, no pooling: the feature map
        outputs = model(x)
        assert outputs.ndim == 4 and outputs.shape[2:] == pool_size
        assert outputs.shape[1] == model.num_features

        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **kwargs).eval()
        outputs = model(x)
        assert outputs.ndim == 4 and outputs.shape[2:] == pool_size

    classifier = cfg["classifier"]
    for key in (classifier,) if isinstance(classifier, str) else classifier:
        assert key + ".weight" in state_dict
    first_conv = cfg["first_conv"]
    for key in (first_conv,) if isinstance(first_conv, str) else first_conv:
        assert key + ".weight" in state_dict


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_forward_torchscript(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_forward_torchscript``: the model scripts and the script matches eager."""
    with timm.set_scriptable(True):
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
    scripted = torch.jit.script(model)
    x = _input(model, 1)
    with torch.no_grad():
        outputs = scripted(x)
        assert outputs.shape[0] == 1
        assert not torch.isnan(outputs).any()
        assert torch.allclose(outputs, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_forward_features(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_forward_features``: ``features_only=True`` (hook-based feature list)."""
    model = timm.create_model(name, pretrained=False, features_only=True, **kwargs).eval()
    assert len(model.feature_info.channels()) >= 3
    x = _input(model, 1)
    with torch.no_grad():
        _check_feature_maps(model(x), model.feature_info, x)


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_forward_intermediates_features(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_forward_intermediates_features``: ``features_only`` via ``forward_intermediates``."""
    model = timm.create_model(name, pretrained=False, features_only=True, feature_cls="getter", **kwargs).eval()
    x = _input(model, 1)
    with torch.no_grad():
        _check_feature_maps(model(x), model.feature_info, x)


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_forward_intermediates(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_forward_intermediates``: one map per ``feature_info`` entry, same final features."""
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    x = _input(model, 1)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        _check_feature_maps(intermediates, info, x)
        assert torch.allclose(output, model.forward_features(x))
        model.set_grad_checkpointing()
        output_checkpointed, _ = model.forward_intermediates(x, output_fmt="NCHW")
        assert torch.allclose(output, output_checkpointed, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, kwargs", ALL)
def test_forward_intermediates_indices(name: str, kwargs: Dict[str, Any]) -> None:
    """``indices``, ``intermediates_only`` and ``prune_intermediate_layers`` behave as in timm's ResNet."""
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    x = _input(model, 1)
    with torch.no_grad():
        everything = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last_two] == [t.shape for t in everything[-2:]]
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.allclose(first[0], everything[0])
        kept = model.prune_intermediate_layers([0, 1])
        assert kept == [0, 1] and model.num_classes == 0
        pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert all(torch.allclose(a, b) for a, b in zip(pruned, everything[:2]))


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_forward_fx(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_forward_fx``: the FX-traced model gives exactly the eager output."""
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    x = _input(model, 1)
    with torch.inference_mode():
        outputs = model(x)
        fx_outputs = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.all(fx_outputs == outputs)
    assert not torch.isnan(outputs).any()


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_backward_fx(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_backward_fx``: backward through the FX-traced model reaches every parameter."""
    model = timm.create_model(name, pretrained=False, num_classes=42, **kwargs).train()
    num_params = _num_params(model)
    fx_model = _fx_model(model, train=True)
    outputs = torch.cat(tuple(fx_model(_input(model, 2)).values()))
    outputs.mean().backward()
    for param_name, param in fx_model.named_parameters():
        assert param.grad is not None, f"No gradient for {param_name}"
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert outputs.shape[-1] == 42


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_forward_fx_torchscript(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_forward_fx_torchscript``: the FX-traced model scripts and runs."""
    with timm.set_scriptable(True):
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
    scripted = torch.jit.script(_fx_model(model))
    with torch.inference_mode():
        outputs = torch.cat(tuple(scripted(_input(model, 1)).values()))
    assert outputs.shape[0] == 1
    assert not torch.isnan(outputs).any()


@pytest.mark.parametrize("name, kwargs", ALL)
def test_model_forward_torchscript_with_features_fx(name: str, kwargs: Dict[str, Any]) -> None:
    """timm ``test_model_forward_torchscript_with_features_fx``: FX feature extraction, scripted."""
    with timm.set_scriptable(True):
        model = timm.create_model(name, pretrained=False, features_only=True, feature_cfg={"feature_cls": "fx"},
                                  **kwargs).eval()
    scripted = torch.jit.script(model)
    x = _input(model, 1)
    with torch.inference_mode():
        outputs = scripted(x)
    assert isinstance(outputs, list)
    _check_feature_maps(outputs, model.feature_info, x)


def test_caller_feature_cfg_overrides_the_defaults() -> None:
    model = timm.create_model("cifar_resnet20", features_only=True, feature_cfg={"out_indices": (1, 3)})
    assert model.feature_info.channels() == [16, 64]
    model = timm.create_model("cifar_mobilenetv2", features_only=True, out_indices=(0, 3))
    assert model.feature_info.channels() == [24, 1280]
