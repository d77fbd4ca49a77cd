"""BatchNorm running statistics: re-estimation, reset, batch-statistics inference (ctx.infer, --teacher-bn)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.context import Context
from toolbox.methods import bn_statistics as batchnorm
from toolbox.methods.distillation import kd_loss
from toolbox.options import RunOptions
from toolbox_plugins.aod import aod_options
from toolbox_plugins.lwf import LwF
from toolbox_plugins.msl import msl_options


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def test_reestimate_is_the_cumulative_average_of_the_batches_statistics() -> None:
    model = small_net().train()
    model[1].momentum = 0.3
    batches = [(torch.randn(4, 1, 5, 5) * 2 + 1, torch.zeros(4)) for _ in range(3)]
    params = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    assert batchnorm.reestimate(model, batches) == 3
    pre_bn = [model[0](x).detach() for x, _ in batches]
    expected_mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in pre_bn]).mean(0)
    expected_var = torch.stack([a.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for a in pre_bn]).mean(0)
    bn = model[1]
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-5)
    # modes, momentum and parameters restored / untouched; no graph recorded
    assert model.training and model[3].training and bn.momentum == 0.3
    assert all(torch.equal(model.state_dict()[k], v) for k, v in params.items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    batchnorm.reestimate(model, batches)
    assert not model.training and not bn.training and not model[3].training


def test_reestimate_keeps_dropout_in_eval_mode() -> None:
    seen: list[bool] = []
    model = small_net().train()
    model[3].register_forward_hook(lambda module, *_: seen.append(module.training))
    batchnorm.reestimate(model, [(torch.randn(2, 1, 5, 5), None)])
    assert seen == [False]


def test_reset_forgets_the_statistics() -> None:
    model = small_net().train()
    model(torch.randn(4, 1, 5, 5) + 3)
    batchnorm.reset(model)
    bn = model[1]
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
    assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("training", [False, True])
def test_batch_statistics_leave_the_buffers_bit_identical(training: bool) -> None:
    model = small_net().train()
    model(torch.randn(8, 1, 5, 5) + 2)  # non-trivial running statistics
    model.train(training)
    model[3].eval()  # dropout off, to compare outputs
    before = buffers(model)
    x = torch.randn(6, 1, 5, 5)
    with batchnorm.batch_statistics(model):
        out = model(x)
    after = buffers(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training == training and model[1].training == training
    reference = copy.deepcopy(model).train()
    reference[3].eval()
    assert torch.allclose(out, reference(x), atol=1e-6)  # train-mode BN = the batch's statistics


def test_ctx_infer_batch_mode_normalizes_with_the_batch_and_keeps_the_teacher_frozen() -> None:
    teacher = small_net().train()
    teacher(torch.randn(8, 1, 5, 5) + 2)
    teacher.eval().requires_grad_(False)
    ctx = Context(options=RunOptions(), model=teacher, device=torch.device("cpu"), teacher=teacher)
    x = torch.randn(6, 1, 5, 5)
    before = buffers(teacher)
    running, batch = ctx.infer(teacher, x), ctx.infer(teacher, x, bn="batch")
    assert torch.equal(running, teacher(x)) and not torch.allclose(running, batch)
    assert all(torch.equal(v, buffers(teacher)[k]) for k, v in before.items())
    assert not batch.requires_grad and not teacher.training
    # the shared teacher logits are cached per batch and per mode
    assert torch.equal(ctx.teacher_logits(x, bn="batch"), batch) and torch.equal(ctx.teacher_logits(x), running)
    with pytest.raises(ValueError, match="bn"):
        ctx.infer(teacher, x, bn="train")


def test_lwf_distills_from_the_batch_statistics_teacher() -> None:
    plugin = LwF()
    options = RunOptions(plugins=["lwf"], plugin={"T": 2.0, "alpha": 1.0, "teacher_bn": "batch"})
    plugin.toolbox_configure(options=options)
    student, teacher = small_net().eval(), small_net().eval().requires_grad_(False)
    teacher[1].running_mean.fill_(5.0)
    x = torch.randn(6, 1, 5, 5)
    ctx = Context(options=options, model=student, device=torch.device("cpu"), step=2, teacher=teacher)
    term = plugin.toolbox_loss(ctx=ctx, batch=(x, torch.zeros(6, dtype=torch.long)), logits=student(x))["lwf_kd"]
    reference = copy.deepcopy(teacher).train()
    reference[3].eval()
    assert term.item() == pytest.approx(kd_loss(student(x), reference(x), 2.0).item(), rel=1e-5)
    assert float(teacher[1].running_mean[0]) == 5.0


def test_the_three_distilling_plugins_share_one_teacher_bn_option() -> None:
    declared = [[o for o in options if o.name == "teacher_bn"][0]
                for options in (aod_options(), msl_options(), LwF().toolbox_options())]
    assert {(o.type, o.default, o.choices) for o in declared} == {(str, "running", ("running", "batch"))}


@pytest.mark.parametrize("plugins", ["lwf", "sst,aod,msl"])
def test_teacher_bn_through_the_cli(tiny_values: dict[str, Any], plugins: str) -> None:
    out = Path(tiny_values["out"])
    args = ["run", "--plugins", plugins, "--teacher-bn", "batch", "--dataset", "synthetic", "--steps", "2",
            "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--threads", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "teacher_bn: batch" in (out / "config.yaml").read_text()
