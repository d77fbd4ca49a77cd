"""BN channel groups (torch-pruning dependency graph), selection and masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolbox.errors import UsageError
from toolbox.sparsity import channels as ch


class ResNet(nn.Module):
    """Stem + one residual block with a 1x1-conv+BN projection shortcut + classifier."""

    default_cfg = {"input_size": (3, 8, 8)}

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.b_conv1, self.b_bn1 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b_conv2, self.b_bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.shortcut = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.b_bn1(self.b_conv1(x)))
        out = torch.relu(self.b_bn2(self.b_conv2(out)) + self.shortcut(x))
        return self.fc(out.mean((2, 3)))


class DWNet(nn.Module):
    """Expand conv + depthwise conv + project conv (MobileNetV2-like) + classifier."""

    default_cfg = {"input_size": (3, 8, 8)}

    def __init__(self) -> None:
        super().__init__()
        self.pw, self.bn_pw = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.proj, self.bn_proj = nn.Conv2d(8, 5, 1, bias=False), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_dw(self.dw(torch.relu(self.bn_pw(self.pw(x))))))
        return self.fc(self.bn_proj(self.proj(x)).mean((2, 3)))


def group_with(graph: ch.ChannelGraph, bn: str) -> ch.ChannelGroup:
    (group,) = [g for g in graph.groups if bn in g.bn_names]
    return group


def test_residual_add_couples_block_bn_and_projection_bn() -> None:
    graph = ch.channel_groups(ResNet())
    group = group_with(graph, "b_bn2")
    assert set(group.bn_names) == {"b_bn2", "shortcut.1"}
    assert {p.name for p in group.producers} == {"b_conv2", "shortcut.0"}
    assert {c.name for c in group.consumers} == {"fc"}
    assert all(torch.equal(s.index, torch.arange(6)) for s in group.bns)
    assert set(group_with(graph, "b_bn1").bn_names) == {"b_bn1"}
    stem = group_with(graph, "bn1")
    assert {c.name for c in stem.consumers} == {"b_conv1", "shortcut.0"}
    assert graph.num_units == 4 + 6 + 6 and not graph.skipped


def test_depthwise_conv_couples_its_input_and_output() -> None:
    graph = ch.channel_groups(DWNet())
    group = group_with(graph, "bn_dw")
    assert set(group.bn_names) == {"bn_pw", "bn_dw"}
    assert {p.name for p in group.producers} == {"pw", "dw"}
    assert {c.name for c in group.consumers} == {"proj"}


def test_graph_is_cached_and_tracing_leaves_the_model_alone() -> None:
    model = ResNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = ch.channel_groups(model)
    assert ch.channel_groups(model) is graph
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_frozen_model_has_the_same_groups_and_stays_frozen() -> None:
    model = ResNet()
    frozen = ResNet().requires_grad_(False)
    model.b_conv1.weight.requires_grad_(False)  # one frozen layer in a trainable model stays frozen too
    assert [g.bn_names for g in ch.channel_groups(frozen).groups] == [g.bn_names for g in ch.channel_groups(model).groups]
    assert ch.channel_groups(frozen).num_units == 4 + 6 + 6
    assert not any(p.requires_grad for p in frozen.parameters())
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["b_conv1.weight"]


def test_global_selection_is_exact_smallest_and_never_empties_a_group() -> None:
    imp = [torch.tensor([0.1, 0.9, 0.2, 0.3]), torch.tensor([0.05, 0.01, 0.02]), torch.tensor([5.0, 6.0, 7.0])]
    sel = ch.select_smallest(imp, 0.5)  # round(0.5 * 10) = 5
    assert sum(int(s.sum()) for s in sel) == 5
    # the three of group 1 are the smallest but one must stay: 0.01, 0.02 + 0.1, 0.2, 0.3
    assert sel[1].tolist() == [False, True, True]
    assert sel[0].tolist() == [True, False, True, True]
    assert not sel[2].any()
    layer = ch.select_smallest(imp, 0.5, layerwise=True)
    assert [int(s.sum()) for s in layer] == [2, 2, 2]
    with pytest.raises(UsageError):
        ch.select_smallest(imp, 1.0)


def test_masks_roundtrip() -> None:
    model = ResNet()
    graph = ch.channel_groups(model)
    torch.manual_seed(0)
    selection = [torch.rand(g.size) < 0.5 for g in graph.groups]
    masks = ch.selection_to_masks(model, graph, selection)
    assert set(masks) == {"bn1", "b_bn1", "b_bn2", "shortcut.1"}
    assert all(m.dtype == torch.bool and m.numel() == ch.module(model, n).num_features for n, m in masks.items())
    assert torch.equal(masks["b_bn2"], masks["shortcut.1"])
    back = ch.masks_to_selection(graph, masks)
    assert all(torch.equal(a, b) for a, b in zip(selection, back))


def test_cifar_resnet_option_a_keeps_only_block_internal_groups() -> None:
    timm = pytest.importorskip("timm")
    import toolbox.models  # noqa: F401

    graph_b = ch.channel_groups(timm.create_model("cifar_resnet20", num_classes=10))
    graph_a = ch.channel_groups(timm.create_model("cifar_resnet20", num_classes=10, shortcut="A"))
    assert len(graph_b.groups) == 12 and not graph_b.skipped
    assert graph_a.skipped and len(graph_a.groups) == 9
    assert all(len(g.bns) == 1 and g.bn_names[0].endswith("bn1") for g in graph_a.groups)


def test_groups_of_a_one_channel_model() -> None:
    """Fashion-MNIST models have in_chans=1 while timm's cfg still says 3 channels."""
    import timm

    import toolbox  # noqa: F401

    model = timm.create_model("cifar_resnet20", num_classes=10, in_chans=1)
    assert ch.channel_groups(model).num_units > 0
