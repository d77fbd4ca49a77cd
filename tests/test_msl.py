"""Multi-step loss: when it applies, that it vanishes on agreement, multi-teacher weights."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from toolbox.context import Context
from toolbox.errors import UsageError
from toolbox.methods.distillation import kd_loss
from toolbox.options import RunOptions
from toolbox.plugin_host.manager import load_plugins
from toolbox_plugins.msl import MSL


def make(step: int, phase: str, loader: Any = None, **extra: Any) -> tuple[MSL, Context]:
    plugin = MSL(loader=loader)
    values = {o.name: o.default for o in plugin.toolbox_options()} | extra
    options = RunOptions(plugins=["sst", "msl"], plugin=values)
    plugin.toolbox_configure(options=options)
    torch.manual_seed(step)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval().requires_grad_(False)
    ctx = Context(options=options, model=model, device=torch.device("cpu"), step=step, num_steps=4,
                  phase=phase, teacher=teacher, run_dir=Path("/nonexistent-run"))
    return plugin, ctx


def loss(plugin: MSL, ctx: Context, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    ctx.new_batch()
    plugin.toolbox_phase_start(ctx=ctx)
    return plugin.toolbox_loss(ctx=ctx, batch=(x, torch.zeros(len(x), dtype=torch.long)), logits=ctx.model(x))


def test_term_only_in_sparsify_phases_after_step_one() -> None:
    x = torch.randn(6, 3, 2, 2)
    for step, phase, present in ((1, "sparsify", False), (2, "learn", False), (2, "sparsify", True), (3, "sparsify", True)):
        plugin, ctx = make(step, phase)
        terms = loss(plugin, ctx, x)
        assert (terms is not None) == present, (step, phase)
        if present:
            expected = kd_loss(ctx.model(x), ctx.teacher(x), 4.0)
            assert terms["msl_kd"].item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 0
    plugin, ctx = make(1, "sparsify", msl_first_step=True)
    assert "msl_kd" in loss(plugin, ctx, x)


def test_term_vanishes_when_student_equals_teacher() -> None:
    plugin, ctx = make(2, "sparsify", msl_weight=2.0)
    ctx.teacher = copy.deepcopy(ctx.model).eval().requires_grad_(False)
    terms = loss(plugin, ctx, torch.randn(6, 3, 2, 2))
    assert terms["msl_kd"].abs().item() < 1e-7


def test_all_teachers_equal_weights_summing_to_msl_weight() -> None:
    earlier = {s: nn.Sequential(nn.Flatten(), nn.Linear(12, 5)) for s in (1, 2)}
    calls: list[tuple[int, str]] = []

    def loader(run_dir: Path, step: int, phase: str) -> nn.Module:
        calls.append((step, phase))
        return copy.deepcopy(earlier[step])

    plugin, ctx = make(3, "sparsify", loader=loader, msl_teachers="all", msl_weight=0.6)
    x = torch.randn(6, 3, 2, 2)
    terms = loss(plugin, ctx, x)
    assert calls == [(1, "sparsify"), (2, "sparsify")]
    s = ctx.model(x)
    expected = 0.2 * sum(kd_loss(s, t(x), 4.0) for t in (ctx.teacher, earlier[1], earlier[2]))
    assert terms["msl_kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    plugin.toolbox_phase_end(ctx=ctx)
    assert not plugin.extra


def test_refuses_without_sst() -> None:
    with pytest.raises(UsageError, match="sparsify"):
        load_plugins(["msl", "aod"])  # the combination is refused when the plugins load
    with pytest.raises(UsageError):
        MSL().toolbox_configure(options=RunOptions(plugins=["sst", "msl"], plugin={"T": -1.0}))
