"""The shared model helpers: BatchNorm listing, freezing, dummy inputs, mean-|gamma| selection."""

from __future__ import annotations

import torch
from torch import nn

from toolbox.models.modules import batchnorms, dummy_input, freeze
from toolbox.sparsity import channels as ch


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2))


def test_batchnorms_lists_the_layers_by_name_with_the_filters() -> None:
    model = tiny()
    assert list(batchnorms(model)) == ["1", "4", "7", "12"]
    assert list(batchnorms(model, affine=True)) == ["1", "7", "12"]
    assert list(batchnorms(model, running_stats=True)) == ["1", "4", "12"]
    assert list(batchnorms(model, affine=True, running_stats=True)) == ["1", "12"]
    assert batchnorms(model)["4"] is model[4]
    assert batchnorms(nn.Linear(2, 2)) == {}


def test_freeze_puts_the_model_in_eval_mode_without_grads() -> None:
    model = tiny().train()
    assert freeze(model) is model
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


def test_dummy_input_shapes_and_seeds() -> None:
    one = dummy_input((3, 8, 8))
    assert one.shape == (1, 3, 8, 8) and one.dtype == torch.float32 and one.device.type == "cpu"
    assert dummy_input([3, 8, 8], 2).shape == (2, 3, 8, 8)
    assert torch.equal(dummy_input((3, 8, 8), 2, seed=5), dummy_input((3, 8, 8), 2, seed=5))
    assert not torch.equal(dummy_input((3, 8, 8), 2, seed=5), dummy_input((3, 8, 8), 2, seed=6))
    # the same draws as torch.randn with a private generator, and the global random state is untouched
    state = torch.get_rng_state()
    expected = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(dummy_input((3, 8, 8), 2, device="cpu"), expected)
    assert torch.equal(torch.get_rng_state(), state)
    zeros = dummy_input((3, 4, 4), 1, zeros=True)
    assert zeros.shape == (1, 3, 4, 4) and not zeros.any()


def test_dummy_input_draws_from_a_given_generator() -> None:
    generator = torch.Generator().manual_seed(3)
    first = dummy_input((2, 4), 3, generator=generator)
    second = dummy_input((2, 4), 3, generator=generator)  # the generator advanced
    reference = torch.Generator().manual_seed(3)
    assert torch.equal(first, torch.randn((3, 2, 4), generator=reference))
    assert torch.equal(second, torch.randn((3, 2, 4), generator=reference))


def test_select_smallest_gamma_picks_the_smallest_mean_gamma() -> None:
    bn_a, bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
    model = nn.ModuleDict({"a": bn_a, "b": bn_b})
    with torch.no_grad():
        bn_a.weight.copy_(torch.tensor([0.9, -0.1, 0.5, 0.2]))
        bn_b.weight.copy_(torch.tensor([0.3, 0.8, -0.05, 0.7]))
    # one group of 4 units over both BNs (b's channels in reverse order), one group of a's channels
    group = ch.ChannelGroup(4, (ch.ModuleSlice("a", torch.arange(4)), ch.ModuleSlice("b", torch.tensor([3, 2, 1, 0]))),
                            (), ())
    graph = ch.ChannelGraph([group])
    # mean |gamma| per unit: (0.9+0.7)/2=0.8, (0.1+0.05)/2=0.075, (0.5+0.8)/2=0.65, (0.2+0.3)/2=0.25
    selection = ch.select_smallest_gamma(model, graph, 0.5)
    assert selection[0].tolist() == [False, True, False, True]
    layerwise = ch.select_smallest_gamma(model, graph, 0.25, layerwise=True)
    assert layerwise[0].tolist() == [False, True, False, False]
