"""Selective sparsity training: selection, subgradient, target mode, phase outputs."""

from __future__ import annotations

import copy
import logging
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
from toolbox.sparsity import channels as ch
from toolbox.sparsity.training import achieved
from toolbox_plugins.sst import SST


def make(mode: str = "target", ratio: float = 0.5, **extra: Any) -> tuple[SST, Context]:
    plugin = SST()
    values = {o.name: o.default for o in plugin.toolbox_options()} | {"sst_mode": mode, "ratio": ratio} | extra
    options = RunOptions(plugins=["sst"], plugin=values, lr=0.1)
    plugin.toolbox_configure(options=options)
    torch.manual_seed(0)
    model = Net()
    ctx = Context(options=options, model=model, device=torch.device("cpu"), step=1, num_steps=2,
                  phase="sparsify", epochs=1, teacher=copy.deepcopy(model).eval())
    return plugin, ctx


def set_gammas(model: nn.Module) -> None:
    """Distinct, known |gamma| values: bn1 ascending from 0.1, bn2 from 1.0, bn3/shortcut from 0.5."""
    with torch.no_grad():
        model.bn1.weight.copy_(torch.linspace(0.1, 0.8, 8))
        model.bn2.weight.copy_(-torch.linspace(1.0, 1.7, 8))
        model.bn3.weight.copy_(torch.linspace(0.5, 1.0, 6))
        model.shortcut[1].weight.copy_(torch.linspace(0.5, 1.0, 6).flip(0))


def run_phase(plugin: SST, ctx: Context, batches: int, lr: float = 0.1) -> None:
    """SST's hooks through one phase (``ctx.epochs`` epochs of ``batches`` random batches)."""
    run_sparsity_phase(plugin, ctx, batches, lr)


def test_phases_and_ratio_validation() -> None:
    plugin, _ = make()
    assert plugin.toolbox_phases(step=1, num_steps=3) == ["sparsify"]
    assert not plugin.toolbox_phases(step=3, num_steps=3)
    (ratio,) = [o for o in SST.declare_options() if o.name == "ratio"]
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(UsageError):
            ratio.parse(str(bad))
        with pytest.raises(UsageError):
            make(ratio=bad)
    assert ratio.parse("0") == 0.0


def test_selection_is_global_smallest_at_exact_ratio_and_coupled() -> None:
    plugin, ctx = make(ratio=0.4)
    set_gammas(ctx.model)
    plugin.toolbox_phase_start(ctx=ctx)
    # 22 filters: bn1 (8), bn2 (8), bn3+shortcut (6, mean |gamma| 0.75 each); round(0.4*22) = 9
    sel = dict(zip([g.bn_names[0] for g in plugin.graph.groups], plugin.selection))
    assert sum(int(s.sum()) for s in plugin.selection) == 9
    assert sel["bn1"].tolist() == [True] * 7 + [False]  # 0.1..0.7 (0.8 kept: a group is never emptied)
    coupled = [k for k in sel if k in ("bn3", "shortcut.1")][0]
    assert int(sel[coupled].sum()) == 2  # the two units with mean 0.75 come next (ties by position)
    assert not sel["bn2"].any()
    assert torch.equal(plugin.chosen["bn3"], plugin.chosen["shortcut.1"])


def test_subgradient_touches_only_selected_gammas() -> None:
    plugin, ctx = make(mode="subgradient", s=0.5)
    set_gammas(ctx.model)
    plugin.toolbox_phase_start(ctx=ctx)
    loss = F.cross_entropy(ctx.model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    before = {n: p.grad.clone() for n, p in ctx.model.named_parameters()}
    plugin.toolbox_regularize(ctx=ctx, model=ctx.model)
    for name, p in ctx.model.named_parameters():
        bn = name.rsplit(".", 1)[0]
        expected = before[name].clone()
        if name.endswith("weight") and bn in plugin.chosen:
            idx = plugin.chosen[bn]
            expected[idx] += 0.5 * torch.sign(p.detach()[idx])
        assert torch.equal(p.grad, expected), name
    assert sum(i.numel() for i in plugin.chosen.values()) > 0


def test_target_mode_reaches_ratio_where_fixed_s_does_not(caplog: pytest.LogCaptureFixture) -> None:
    fixed, ctx_fixed = make(mode="subgradient")
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        run_phase(fixed, ctx_fixed, batches=6)
    assert ctx_fixed.phase_metrics["sparsity"] < 0.1
    assert ctx_fixed.phase_metrics["sparsity_target_reached"] == 0
    assert "MISSED ITS TARGET" in caplog.text

    target, ctx = make(mode="target")
    ctx.batches_per_epoch = 6  # what the engine announces at phase start
    run_phase(target, ctx, batches=6)
    r = 0.5
    assert abs(ctx.phase_metrics["sparsity_trained"] - r) <= 0.02  # reached by training, not the snap
    assert abs(ctx.phase_metrics["sparsity"] - r) <= 0.02
    assert ctx.phase_metrics["sparsity_target_reached"] == 1
    assert ctx.phase_metrics["sparsity_selected"] == 1.0


def test_target_mode_uses_the_engines_epoch_length() -> None:
    plugin, ctx = make(mode="target")
    ctx.epochs = 2
    ctx.batches_per_epoch = 3
    run_phase(plugin, ctx, batches=3)  # 2 epochs x 3 batches, as the engine announced
    assert ctx.phase_metrics["sparsity_trained"] == pytest.approx(ctx.phase_metrics["sparsity"])
    assert ctx.phase_metrics["sparsity_target_reached"] == 1


def test_wrong_epoch_length_is_still_guaranteed_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    plugin, ctx = make(mode="target")
    ctx.batches_per_epoch = 100  # far more than the 2 batches that will run
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        run_phase(plugin, ctx, batches=2)
    assert ctx.phase_metrics["sparsity_trained"] < 0.5
    assert ctx.phase_metrics["sparsity_target_reached"] == 1
    assert "FORCED ITS TARGET" in caplog.text


def test_phase_end_outputs(tmp_path: Path) -> None:
    plugin, ctx = make(mode="target", ratio=0.25)
    ctx.run_dir = tmp_path
    ctx.masks = {"old": torch.ones(3, dtype=torch.bool)}
    ctx.batches_per_epoch = 2
    run_phase(plugin, ctx, batches=2)
    assert "old" not in ctx.masks and set(ctx.masks) == {"bn1", "bn2", "bn3", "shortcut.1"}
    masked = sum(int(m.sum()) for n, m in ctx.masks.items() if n != "shortcut.1")
    assert masked == round(0.25 * 22)
    for name, mask in ctx.masks.items():
        assert torch.all(ch.module(ctx.model, name).weight.detach()[mask] == 0)
    record = ctx.records["sst"]["step1"]
    assert record["mode"] == "target" and len(record["s_per_epoch"]) == 1 and record["s_per_epoch"][0] > 0
    assert (tmp_path / "gamma_hist_step1.png").stat().st_size > 1000
    ratio, frac = achieved(ctx.model, plugin.graph, plugin.selection, 1e-2)
    assert frac == 1.0 and ratio == ctx.phase_metrics["sparsity"]


def test_other_phases_are_untouched() -> None:
    plugin, ctx = make(mode="subgradient", s=1.0)
    ctx.phase = "learn"
    plugin.toolbox_phase_start(ctx=ctx)
    ctx.model(torch.randn(2, 3, 8, 8)).sum().backward()
    grads = {n: p.grad.clone() for n, p in ctx.model.named_parameters()}
    plugin.toolbox_regularize(ctx=ctx, model=ctx.model)
    plugin.toolbox_phase_end(ctx=ctx)
    assert all(torch.equal(grads[n], p.grad) for n, p in ctx.model.named_parameters())
    assert not ctx.masks and not ctx.phase_metrics


def test_target_at_reaches_zero_early_and_holds_it() -> None:
    plugin, ctx = make(mode="target", sparsity_target_at=0.5)
    ctx.epochs = 2
    ctx.batches_per_epoch = 3
    run_phase(plugin, ctx, batches=3)
    record = ctx.records["sst"]["step1"]
    # after the first epoch (= half of the phase) the target was already reached by training
    assert record["ratio_per_epoch"][0] == pytest.approx(0.5, abs=0.02)
    assert ctx.phase_metrics["sparsity_trained"] == pytest.approx(ctx.phase_metrics["sparsity"])
    for name, mask in ctx.masks.items():
        assert torch.all(ch.module(ctx.model, name).weight.detach()[mask] == 0)


def test_phase_end_writes_the_controller_plot(tmp_path: Path) -> None:
    plugin, ctx = make(mode="target", ratio=0.25)
    ctx.run_dir, ctx.epochs, ctx.batches_per_epoch = tmp_path, 2, 2
    run_phase(plugin, ctx, batches=2)
    assert len(plugin.s_history) == len(plugin.ratio_history) == 2
    assert (tmp_path / "sparsity_step1.png").stat().st_size > 1000


def test_a_failing_controller_plot_does_not_end_the_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import toolbox.sparsity.training

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no display")

    monkeypatch.setattr(toolbox.sparsity.training, "plot_controller", broken)
    plugin, ctx = make(mode="target", ratio=0.25)
    ctx.run_dir, ctx.batches_per_epoch = tmp_path, 2
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        run_phase(plugin, ctx, batches=2)
    assert "could not write the sparsity plot (no display)" in caplog.text
    assert ctx.masks and not (tmp_path / "sparsity_step1.png").exists()
