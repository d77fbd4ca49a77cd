"""Folding BatchNorm into the conv before it: same eval-mode function, fewer modules, clear refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from toolbox.pruning.fold_batchnorm import count_batchnorms, fold_batchnorm


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval-mode ``model`` with random BN statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.1)
    return model.eval()


class Branching(nn.Module):
    """conv1 is read by its BN and by a skip connection: only conv2's BN may fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(x)
        return self.bn2(self.conv2(torch.relu(self.bn1(a)))) + a


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_folded_copy_computes_the_same_function_without_the_bns() -> None:
    model = randomized(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 5, 1), nn.BatchNorm2d(5)))
    original = copy.deepcopy(model.state_dict())
    folded, reason = fold_batchnorm(model)
    assert folded is not None and reason == "folded 2 of 2 BatchNorms"
    assert count_batchnorms(folded) == 0 and count_batchnorms(model) == 2
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())  # the source is untouched
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())


def test_a_conv_read_by_more_than_its_bn_keeps_its_bn() -> None:
    model = randomized(Branching())
    folded, reason = fold_batchnorm(model)
    assert folded is not None and reason == "folded 1 of 2 BatchNorms" and count_batchnorms(folded) == 1
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_channels_last_weights_stay_channels_last() -> None:
    model = randomized(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))).to(memory_format=torch.channels_last)
    folded, _ = fold_batchnorm(model)
    assert folded is not None
    weight = next(p for p in folded.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize("model,why", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "no BatchNorm"),
    (nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)), "no BatchNorm directly follows"),
    (DataDependent(), "cannot be traced"),
])
def test_where_nothing_folds_the_reason_is_given(model: nn.Module, why: str) -> None:
    folded, reason = fold_batchnorm(randomized(model))
    assert folded is None and why in reason
