"""Alternative regularizers (slimming, polarization, group_lasso) on the shared sparsity base."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from nets import Net
from sparsity_phase import run_sparsity_phase
from torch import nn

from toolbox.context import Context
from toolbox.errors import UsageError
from toolbox.options import RunOptions
from toolbox.run.start import start_run
from toolbox.sparsity import channels as ch
from toolbox.sparsity.training import SparsityTraining, Units, sparsity_plugins
from toolbox.storage.checkpoint import load_checkpoint, phase_checkpoint_path
from toolbox_plugins.group_lasso import GroupLasso, add_group_lasso_grad_, block_soft_threshold_, group_norms
from toolbox_plugins.polarization import Polarization, polarization_grad, polarization_penalty
from toolbox_plugins.slimming import Slimming

MODE_KEY = {"slimming": "slimming_mode", "polarization": "polar_mode", "group_lasso": "gl_mode"}


BNS = ("bn1", "bn2", "bn3", "shortcut.1")


def make(cls: type[SparsityTraining], mode: str = "target", ratio: float = 0.5,
         **extra: Any) -> tuple[SparsityTraining, Context]:
    plugin = cls()
    values = {o.name: o.default for o in plugin.toolbox_options()} | {f"{cls.prefix}_mode": mode, "ratio": ratio} | extra
    options = RunOptions(plugins=[cls.name], plugin=values, lr=0.1)
    plugin.toolbox_configure(options=options)
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        for i, name in enumerate(BNS):
            bn = ch.module(model, name)
            bn.weight.copy_(torch.linspace(0.1 + 0.3 * i, 1.0 + 0.3 * i, bn.num_features) * (-1) ** i)
            bn.bias.uniform_(-0.2, 0.2)
    ctx = Context(options=options, model=model, device=torch.device("cpu"), step=1, num_steps=2,
                  phase="sparsify", epochs=1, teacher=copy.deepcopy(model).eval())
    return plugin, ctx


def backward(ctx: Context) -> dict[str, torch.Tensor]:
    """One backward pass on random data; returns the gradients before any regularizer."""
    torch.manual_seed(3)
    F.cross_entropy(ctx.model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    return {n: p.grad.clone() for n, p in ctx.model.named_parameters()}


def run_phase(plugin: SparsityTraining, ctx: Context, batches: int) -> None:
    """One epoch of SGD on random data, with the batch count announced as the engine does."""
    ctx.batches_per_epoch = batches
    run_sparsity_phase(plugin, ctx, batches)


# ----------------------------------------------------------------------------- maths, by hand
def test_polarization_value_and_subgradient_by_hand() -> None:
    g = torch.tensor([0.2, 0.4, 1.2])  # mean 0.6
    assert polarization_penalty(g, 1.2).item() == pytest.approx(1.2 * 1.8 - (0.4 + 0.2 + 0.6))
    # t*sign(g) - sign(g - mean) + mean(sign(g - mean)) = 1.2*[1,1,1] - [-1,-1,1] - 1/3
    expected = torch.tensor([2.2 - 1 / 3, 2.2 - 1 / 3, 0.2 - 1 / 3])
    assert torch.allclose(polarization_grad(g, 1.2), expected)
    g = torch.tensor([0.1, 0.5, -0.3, 0.9])  # mean 0.3, deviations balanced: the mean term is 0
    assert torch.allclose(polarization_grad(g, 1.2), torch.tensor([2.2, 0.2, -0.2, 0.2]))
    leaf = g.clone().requires_grad_(True)
    polarization_penalty(leaf, 0.7).backward()
    assert torch.allclose(leaf.grad, polarization_grad(g, 0.7))


def test_group_lasso_norm_gradient_and_prox_by_hand() -> None:
    conv, bn = nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([3.0, 0.0]).view(2, 1, 1, 1))
        bn.weight.copy_(torch.tensor([4.0, 0.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.0]))
    graph = ch.channel_groups(model, input_size=(1, 1, 1))
    assert [t.tolist() for t in group_norms(model, graph)] == [[5.0, 0.0]]  # sqrt(3^2 + 4^2 + 0^2)
    units = Units.everything(graph, torch.device("cpu"))
    for p in (conv.weight, bn.weight, bn.bias):
        p.grad = torch.zeros_like(p)
    add_group_lasso_grad_(model, units, 0.5)  # 0.5 * w / 5 on unit 0, nothing on the zero unit 1
    assert torch.allclose(conv.weight.grad.flatten(), torch.tensor([0.3, 0.0]))
    assert torch.allclose(bn.weight.grad, torch.tensor([0.4, 0.0]))
    block_soft_threshold_(model, units, 2.0)  # norm 5 -> 3, same direction
    assert torch.allclose(conv.weight.flatten(), torch.tensor([1.8, 0.0]))
    assert torch.allclose(bn.weight.detach(), torch.tensor([2.4, 0.0]))
    block_soft_threshold_(model, units, 10.0)
    assert conv.weight.abs().sum() == 0 and bn.weight.abs().sum() == 0


def test_group_lasso_gradient_matches_autograd_on_coupled_groups() -> None:
    plugin, ctx = make(GroupLasso, mode="subgradient", gl_s=0.01)
    plugin.toolbox_phase_start(ctx=ctx)
    model, graph = ctx.model, plugin.graph
    before = backward(ctx)
    plugin.toolbox_regularize(ctx=ctx, model=model)
    added = {n: p.grad - before[n] for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    total: Any = 0.0
    for group in graph.groups:  # the penalty written out with differentiable ops
        squares: Any = 0.0
        for s in group.producers:
            squares = squares + ch.module(model, s.name).weight[s.index].reshape(group.size, -1).pow(2).sum(1)
        for s in group.bns:
            bn = ch.module(model, s.name)
            squares = squares + bn.weight[s.index] ** 2 + bn.bias[s.index] ** 2
        total = total + squares.sqrt().sum()
    (0.01 * total).backward()
    for name, p in model.named_parameters():
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(added[name], expected, atol=1e-7), name
    coupled = [g for g in graph.groups if len(g.bns) == 2][0]
    assert {s.name for s in coupled.producers} == {"conv3", "shortcut.0"}


# ----------------------------------------------------------------------------- penalties in the plugins
def test_slimming_subgradient_is_s_sign_gamma_on_every_gamma() -> None:
    plugin, ctx = make(Slimming, mode="subgradient", s=0.5)
    plugin.toolbox_phase_start(ctx=ctx)
    before = backward(ctx)
    plugin.toolbox_regularize(ctx=ctx, model=ctx.model)
    for name in BNS:
        weight = ch.module(ctx.model, name).weight
        assert torch.equal(weight.grad, before[f"{name}.weight"] + 0.5 * torch.sign(weight.detach())), name
        assert torch.equal(ch.module(ctx.model, name).bias.grad, before[f"{name}.bias"])


def test_target_mode_penalizes_only_the_unselected_in_fixed_strength() -> None:
    plugin, ctx = make(Slimming, mode="target", s=0.5)
    plugin.toolbox_phase_start(ctx=ctx)
    before = backward(ctx)
    plugin.toolbox_regularize(ctx=ctx, model=ctx.model)
    masks = ch.selection_to_masks(ctx.model, plugin.graph, plugin.selection)
    for name in BNS:
        weight, mask = ch.module(ctx.model, name).weight, masks[name]
        added = weight.grad - before[f"{name}.weight"]
        assert torch.allclose(added[mask], torch.zeros(int(mask.sum())))
        assert torch.allclose(added[~mask], 0.5 * torch.sign(weight.detach()[~mask]))


def test_polarization_plugin_uses_the_mean_over_all_gammas() -> None:
    plugin, ctx = make(Polarization, mode="subgradient", polar_s=0.1, polar_t=1.4)
    plugin.toolbox_phase_start(ctx=ctx)
    before = backward(ctx)
    plugin.toolbox_regularize(ctx=ctx, model=ctx.model)
    names = plugin.graph.bn_names()
    gammas = torch.cat([ch.module(ctx.model, n).weight.detach() for n in names])
    expected = polarization_grad(gammas, 1.4).split([ch.module(ctx.model, n).num_features for n in names])
    for name, part in zip(names, expected):
        assert torch.allclose(ch.module(ctx.model, name).weight.grad, before[f"{name}.weight"] + 0.1 * part)


def test_polarization_clamp_and_options() -> None:
    options = {o.name: o for o in Polarization().toolbox_options()}
    assert options["polar_t"].default == 1.2 and options["polar_mode"].choices == ("target", "subgradient")
    with pytest.raises(UsageError, match="polar-t"):
        options["polar_t"].parse("0")
    plugin, ctx = make(Polarization, mode="subgradient", polar_clamp=True)
    run_phase(plugin, ctx, batches=1)
    for name in BNS:
        weight = ch.module(ctx.model, name).weight
        assert weight.min() >= 0 and weight.max() <= 1


# ----------------------------------------------------------------------------- phase outputs
@pytest.mark.parametrize("cls", [Slimming, Polarization, GroupLasso])
def test_target_mode_reaches_the_ratio_by_training(cls: type[SparsityTraining]) -> None:
    plugin, ctx = make(cls, mode="target")
    run_phase(plugin, ctx, batches=4)
    assert ctx.phase_metrics["sparsity"] == pytest.approx(0.5, abs=0.03)
    assert ctx.phase_metrics["sparsity_trained"] == pytest.approx(ctx.phase_metrics["sparsity"])
    assert ctx.phase_metrics["sparsity_target_reached"] == 1
    for name, mask in ctx.masks.items():
        assert torch.all(ch.module(ctx.model, name).weight.detach()[mask] == 0)
    record = ctx.records[cls.name]["step1"]
    assert record["mode"] == "target" and record["selected_filters"] == round(0.5 * 22)


@pytest.mark.parametrize("cls", [Slimming, Polarization, GroupLasso])
def test_fixed_mode_masks_are_the_least_important_at_phase_end(cls: type[SparsityTraining]) -> None:
    plugin, ctx = make(cls, mode="subgradient", ratio=0.25)
    run_phase(plugin, ctx, batches=2)
    expected = ch.select_smallest(plugin.importance(ctx.model), 0.25)
    selection = ch.masks_to_selection(plugin.graph, ctx.masks)
    assert all(torch.equal(a, b) for a, b in zip(selection, expected))
    assert sum(int(m.sum()) for n, m in ctx.masks.items() if n != "shortcut.1") == round(0.25 * 22)
    assert ctx.phase_metrics["sparsity_target_reached"] == 0  # a fixed small s does not get there


def test_group_lasso_ranks_by_filter_norm() -> None:
    plugin, ctx = make(GroupLasso)
    with torch.no_grad():
        ctx.model.conv2.weight[5].zero_()
        ctx.model.bn2.weight[5] = 0.0
        ctx.model.bn2.bias[5] = 0.0
    plugin.toolbox_phase_start(ctx=ctx)
    group = [i for i, g in enumerate(plugin.graph.groups) if g.bn_names == ["bn2"]][0]
    assert bool(plugin.selection[group][5])
    norms = plugin.importance(ctx.model)[group]
    conv, bn = ctx.model.conv2.weight.detach(), ctx.model.bn2
    by_hand = torch.sqrt(conv[0].pow(2).sum() + bn.weight.detach()[0] ** 2 + bn.bias.detach()[0] ** 2)
    assert norms[5] == 0 and math.isclose(float(norms[0]), float(by_hand), rel_tol=1e-5)


# ----------------------------------------------------------------------------- in the pipeline
def test_sparsity_plugins_are_recognized_and_exclusive(tiny_values: dict[str, Any]) -> None:
    assert sparsity_plugins(["sst", "aod", "slimming", "polarization", "group_lasso", "msl", "nope"]) == [
        "sst", "slimming", "polarization", "group_lasso"]
    with pytest.raises(UsageError, match="only one sparsity plugin"):
        start_run({**tiny_values, "plugins": "sst,slimming,aod"})
    with pytest.raises(UsageError, match="gl-mode"):
        start_run({**tiny_values, "plugins": "group_lasso", "gl_mode": "nope"})


@pytest.mark.parametrize("name", ["slimming", "polarization", "group_lasso"])
def test_regularizer_replaces_sst_in_the_pipeline(tiny_values: dict[str, Any], name: str) -> None:
    results = start_run({**tiny_values, "plugins": f"{name},aod,msl"}).execute()
    phases = [[p["phase"] for p in s["phases"]] for s in results["steps"]]
    assert phases == [["learn", "sparsify"], ["learn", "sparsify"], ["learn"]]
    for step in results["steps"][:2]:
        assert step["phases"][1]["sparsity"] == pytest.approx(0.5, abs=0.02)
        assert step["phases"][1]["sparsity_target_reached"] == 1
    out = Path(tiny_values["out"])
    checkpoint = load_checkpoint(phase_checkpoint_path(out, 1, "sparsify"))
    assert checkpoint["masks"] and name in checkpoint["records"]
    for bn, mask in checkpoint["masks"].items():
        assert torch.all(checkpoint["state_dict"][f"{bn}.weight"][mask] == 0)
    metrics = (out / "metrics.jsonl").read_text()
    prefix = {"slimming": "slimming", "polarization": "polar", "group_lasso": "gl"}[name]
    for term in ('"aod_kd"', '"msl_kd"', f'"{prefix}_ratio"', f'"{prefix}_s"'):
        assert term in metrics
