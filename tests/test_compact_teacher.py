"""Compact frozen teachers: same logits as the masked teacher, AOD's and MSL's losses unchanged,
the dense fallback (with its log line) where compaction does not apply."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

import toolbox  # noqa: F401  (registers the CIFAR backbones)
from toolbox.context import Context
from toolbox.options import RunOptions
from toolbox.pruning import compact_teacher as tt
from toolbox.pruning import compaction as cp
from toolbox.pruning.cost import cost
from toolbox.pruning.fold_batchnorm import count_batchnorms
from toolbox.sparsity import bn_l1
from toolbox.sparsity import channels as ch
from toolbox_plugins.aod import AOD
from toolbox_plugins.msl import MSL

RESNETS = [a for a in timm.list_models("cifar_*") if "resnet" in a]
BACKBONES = ([(a, {"shortcut": s}) for a in RESNETS for s in ("A", "B")]
             + [(a, {}) for a in timm.list_models("cifar_*") + ["tinyimagenet_mobilenetv2"] if a not in RESNETS])


def trained_looking(arch: str, kwargs: dict[str, Any] | None = None, classes: int = 10, seed: int = 0) -> nn.Module:
    """A model in eval mode with random BN statistics and affine parameters (betas not 0)."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=classes, **(kwargs or {})).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.95 + 0.05)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def input_size(model: nn.Module) -> tuple[int, int, int]:
    return tuple(model.pretrained_cfg["input_size"])  # type: ignore[return-value]


def sst_like(model: nn.Module, ratio: float = 0.5, zero_betas: bool = False) -> dict[str, torch.Tensor]:
    """What SST's target mode leaves: the ``ratio`` smallest-|gamma| filters (global ranking) with
    gamma exactly 0 on every coupled BN (betas left as they are, or 0); returns the masks."""
    graph = ch.channel_groups(model, input_size(model))
    selection = bn_l1.select(model, graph, ratio)
    chosen = ch.selected_channels(graph, selection)
    bn_l1.zero_chosen_(model, chosen)
    if zero_betas:
        with torch.no_grad():
            for name, idx in chosen.items():
                ch.module(model, name).bias[idx] = 0.0
    return ch.selection_to_masks(model, graph, selection)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float()


def frozen(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


@pytest.mark.parametrize("arch,kwargs", BACKBONES, ids=[a + kw.get("shortcut", "") for a, kw in BACKBONES])
def test_compact_teacher_has_the_masked_teachers_logits(arch: str, kwargs: dict[str, Any]) -> None:
    teacher = trained_looking(arch, kwargs)
    masks = sst_like(teacher)
    small, reason = tt.compact_teacher(teacher, masks, input_size(teacher))
    assert small is not None, reason
    x = torch.randn(4, *input_size(teacher), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(logits(small, x), logits(teacher, x), atol=1e-5, rtol=0)
    assert not small.training and not any(p.requires_grad for p in small.parameters())
    assert cost(small, input_size(teacher))[0] < 0.8 * cost(teacher, input_size(teacher))[0]
    derived, _ = tt.compact_teacher(teacher, None, input_size(teacher))  # masks from the exact zeros
    assert derived is not None and torch.allclose(logits(derived, x), logits(teacher, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,kwargs", BACKBONES, ids=[a + kw.get("shortcut", "") for a, kw in BACKBONES])
def test_the_distilled_module_is_compact_folded_and_exact(arch: str, kwargs: dict[str, Any]) -> None:
    teacher = trained_looking(arch, kwargs)
    masks = sst_like(teacher)
    teacher = frozen(teacher)
    chosen = tt.distillation_teacher(teacher, masks, input_size(teacher))
    x = torch.randn(4, *input_size(teacher), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(logits(chosen, x), logits(teacher, x), atol=1e-5, rtol=0)
    assert count_batchnorms(chosen) < count_batchnorms(teacher)
    assert cost(chosen, input_size(teacher))[0] < 0.8 * cost(teacher, input_size(teacher))[0]


def test_a_teacher_in_train_mode_keeps_its_batchnorms() -> None:
    teacher = trained_looking("cifar_resnet20").train()
    folded, reason = tt.inference_copy(teacher, (3, 32, 32))
    assert folded is None and "train mode" in reason


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_zero_betas_and_other_input_sizes_stay_exact(shortcut: str) -> None:
    teacher = trained_looking("cifar_resnet20", {"shortcut": shortcut})
    masks = sst_like(teacher, zero_betas=True)
    small, reason = tt.compact_teacher(teacher, masks, (3, 32, 32))
    assert small is not None, reason
    for size in (32, 40):
        x = torch.randn(3, 3, size, size)
        assert torch.allclose(logits(small, x), logits(teacher, x), atol=1e-5, rtol=0)


def test_teacher_is_unchanged_and_keeps_channels_last() -> None:
    teacher = trained_looking("cifar_resnet20").to(memory_format=torch.channels_last)
    masks = sst_like(teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    rng = torch.get_rng_state()
    small, _ = tt.compact_teacher(teacher, masks, (3, 32, 32))
    assert torch.equal(rng, torch.get_rng_state())  # the run's random stream is untouched
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert small.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_where_compaction_does_not_apply_the_reason_is_given() -> None:
    teacher = trained_looking("cifar_resnet20")
    masks = sst_like(teacher)
    assert tt.compact_teacher(teacher, {}, (3, 32, 32)) == (None, "no masked filters")
    alive = copy.deepcopy(teacher)
    with torch.no_grad():  # as after AOD's re-initialization: masked scales 0.01
        for name, mask in masks.items():
            ch.module(alive, name).weight[mask] = 0.01
    small, reason = tt.compact_teacher(alive, masks, (3, 32, 32))
    assert small is None and "not 0" in reason
    small, reason = tt.compact_teacher(alive, None, (3, 32, 32))
    assert small is None and "exactly 0" in reason
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with torch.no_grad():
        plain[1].weight[0] = 0.0
    small, reason = tt.compact_teacher(plain, {"1": torch.tensor([True, False, False, False])}, None)
    assert small is None and "cannot be traced" in reason  # no input size anywhere


def test_fallback_logs_one_line_and_uses_the_dense_teacher(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    teacher = trained_looking("cifar_resnet20")
    masks = sst_like(teacher)
    teacher = frozen(teacher)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torch-pruning cannot handle this op")

    monkeypatch.setattr(cp, "compact", broken)
    with caplog.at_level(logging.INFO, logger="toolbox"):
        chosen = tt.distillation_teacher(teacher, masks, (3, 32, 32))
    assert count_batchnorms(chosen) == 0 and count_batchnorms(teacher) > 0  # the dense teacher, BNs folded
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(logits(chosen, x), logits(teacher, x), atol=1e-5, rtol=0)
    lines = [r.getMessage() for r in caplog.records if "teacher" in r.getMessage()]
    assert len(lines) == 1 and "dense model" in lines[0] and "torch-pruning cannot handle" in lines[0]
    assert "folded" in lines[0]
    assert tt.distillation_teacher(teacher, masks, (3, 32, 32), enabled=False) is teacher


def test_a_lossy_compaction_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = trained_looking("cifar_resnet20")
    masks = sst_like(teacher)
    teacher = frozen(teacher)
    real = cp.compact

    def lossy(*args: Any, **kwargs: Any) -> Any:
        small, record = real(*args, **kwargs)
        with torch.no_grad():
            small.fc.bias += 1.0
        return small, record

    monkeypatch.setattr(cp, "compact", lossy)
    small, reason = tt.compact_teacher(teacher, masks, (3, 32, 32))
    assert small is None and "differ" in reason


# ----------------------------------------------------------------------------- the core and plugins
def aod_context(compact_teacher: bool, arch: str = "cifar_resnet20") -> tuple[AOD, Context]:
    """Step 2's learn phase: the frozen SST teacher (masked gammas 0), AOD's re-initialized student."""
    plugin = AOD()
    values = {o.name: o.default for o in plugin.toolbox_options()}
    options = RunOptions(plugins=["sst", "aod"], plugin=values, compact_teacher=compact_teacher)
    plugin.toolbox_configure(options=options)
    model = trained_looking(arch)
    masks = sst_like(model)
    ctx = Context(options=options, model=model.train(), device=torch.device("cpu"), step=2, num_steps=3,
                  phase="learn", epochs=1, input_size=(3, 32, 32), teacher=frozen(model), masks=dict(masks))
    plugin.toolbox_phase_start(ctx=ctx)
    torch.manual_seed(5)
    plugin.toolbox_model_surgery(ctx=ctx, model=ctx.model)
    return plugin, ctx


def test_aod_loss_is_unchanged_with_the_compact_teacher(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(4))
    losses, teachers = {}, {}
    for compact in (True, False):
        plugin, ctx = aod_context(compact)
        ctx.new_batch()
        with caplog.at_level(logging.INFO, logger="toolbox"):
            student = ctx.model(x)
            losses[compact] = plugin.toolbox_loss(ctx=ctx, batch=(x, y), logits=student)["aod_kd"]
        teachers[compact] = ctx.distillation_teacher()
        assert (teachers[compact] is ctx.teacher) == (not compact)
    assert losses[True].item() > 0
    assert torch.allclose(losses[True], losses[False], atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in teachers[True].parameters()) < 0.6 * sum(p.numel() for p in teachers[False].parameters())
    assert any("distilling from its compact copy" in r.getMessage() for r in caplog.records)


def test_context_builds_the_compact_teacher_once_per_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    _, ctx = aod_context(True)
    calls = []
    real = tt.compact_teacher
    monkeypatch.setattr(tt, "compact_teacher", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        ctx.new_batch()
        ctx.teacher_logits(x)
    assert len(calls) == 1
    ctx.teacher = frozen(ctx.model)  # AOD re-initialized it: masked scales 0.01, so the dense one is used
    dense = ctx.distillation_teacher()
    filters = [sum(p.numel() for p in m.parameters() if p.dim() == 4) for m in (dense, ctx.teacher)]
    assert len(calls) == 2 and filters[0] == filters[1]  # not compacted


def test_msl_earlier_teachers_are_compact(tmp_path: Path) -> None:
    earlier = {s: trained_looking("cifar_resnet20", seed=s) for s in (1, 2)}
    for model in earlier.values():
        sst_like(model)

    def loader(run_dir: Path, step: int, phase: str) -> nn.Module:
        return copy.deepcopy(earlier[step])

    x = torch.randn(4, 3, 32, 32)
    terms = {}
    for compact in (True, False):
        plugin = MSL(loader=loader)
        values = {o.name: o.default for o in plugin.toolbox_options()} | {"msl_teachers": "all"}
        options = RunOptions(plugins=["sst", "msl"], plugin=values, compact_teacher=compact)
        plugin.toolbox_configure(options=options)
        model = trained_looking("cifar_resnet20", seed=3)
        ctx = Context(options=options, model=model, device=torch.device("cpu"), step=3, num_steps=4,
                      phase="sparsify", input_size=(3, 32, 32), teacher=frozen(model), run_dir=tmp_path)
        plugin.toolbox_phase_start(ctx=ctx)
        sizes = [sum(p.numel() for p in m.parameters()) for m in plugin.extra]
        dense = sum(p.numel() for p in earlier[1].parameters())
        assert all((n < 0.6 * dense) if compact else n == dense for n in sizes)
        ctx.new_batch()
        terms[compact] = plugin.toolbox_loss(ctx=ctx, batch=(x, torch.zeros(4, dtype=torch.long)), logits=model(x))
    assert torch.allclose(terms[True]["msl_kd"], terms[False]["msl_kd"], atol=1e-5, rtol=1e-5)


def test_a_run_distils_from_the_compact_sst_teacher(tiny_values: dict[str, Any],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from toolbox.run.start import start_run

    values = {**tiny_values, "plugins": "sst,aod", "steps": 2, "per_class": 8}
    with caplog.at_level(logging.INFO, logger="toolbox"):
        start_run(values).execute()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher:")]
    assert lines and "compact copy" in lines[0], lines
