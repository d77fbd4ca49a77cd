"""shrink_perturb: the maths, the BatchNorm statistics after the change (FINDINGS 12), the plugin, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.context import Context
from toolbox.errors import UsageError
from toolbox.methods import bn_statistics as batchnorm
from toolbox.methods.shrink_perturb import shrink_perturb_
from toolbox.options import RunOptions
from toolbox.plugin_host.manager import load_plugins
from toolbox_plugins.shrink_perturb import ShrinkPerturb

PROTOTYPES = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes: a fixed random pattern per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return PROTOTYPES[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g), y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A small conv-BN net trained to ~100 % on the four-pattern task."""
    torch.manual_seed(0)
    model, (x, y) = net(), images(512, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):
        i = torch.randint(0, 512, (64,))
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_every_parameter_becomes_shrink_theta_plus_perturb_fresh() -> None:
    torch.manual_seed(0)
    model, fresh = net(), net()
    before, stats = copy.deepcopy(model.state_dict()), {k: v.clone() for k, v in model.named_buffers()}
    assert shrink_perturb_(model, fresh, 0.4, 0.1) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        assert torch.allclose(param, 0.4 * before[name] + 0.1 * dict(fresh.named_parameters())[name])
    assert all(torch.equal(v, dict(model.named_buffers())[k]) for k, v in stats.items())  # left to batchnorm


def test_a_fresh_model_of_another_shape_is_refused() -> None:
    with pytest.raises(UsageError, match="same shape"):
        shrink_perturb_(net(), nn.Sequential(nn.Conv2d(1, 4, 3)), 0.4, 0.1)


def test_stale_statistics_sit_near_chance_and_reestimated_ones_do_not(trained: nn.Module) -> None:
    """FINDINGS 12: right after shrink-and-perturb the stored BN statistics no longer fit the weights."""
    x, y = images(512, 1)
    test_x, test_y = images(256, 2)
    assert accuracy(trained, test_x, test_y) > 0.95
    torch.manual_seed(5)
    stale = copy.deepcopy(trained)
    shrink_perturb_(stale, net(), 0.4, 0.1)
    reestimated = copy.deepcopy(stale)
    batchnorm.reestimate(reestimated, [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)])
    assert accuracy(stale, test_x, test_y) < 0.4  # chance is 0.25
    assert accuracy(reestimated, test_x, test_y) > 0.95


@pytest.mark.parametrize("bn", ["reestimate", "reset"])
def test_the_plugin_acts_at_learn_phases_after_step_one(trained: nn.Module, bn: str) -> None:
    x, y = images(128, 1)
    options = RunOptions(plugins=["shrink_perturb"], plugin={"sp_shrink": 0.5, "sp_perturb": 0.2, "sp_bn": bn})
    plugin = ShrinkPerturb()
    plugin.toolbox_configure(options=options)
    model = copy.deepcopy(trained)
    fresh = net()
    for step, phase in ((1, "learn"), (2, "sparsify")):
        ctx = Context(options=options, model=model, device=torch.device("cpu"), step=step, phase=phase)
        assert plugin.toolbox_model_surgery(ctx=ctx, model=model) is None
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    ctx = Context(options=options, model=model, device=torch.device("cpu"), step=2, phase="learn",
                  model_factory=lambda: copy.deepcopy(fresh), batch_source=lambda: [(x[:64], y[:64]), (x[64:], y[64:])])
    assert plugin.toolbox_model_surgery(ctx=ctx, model=model) is None
    conv = model[0].weight
    assert torch.allclose(conv, 0.5 * trained[0].weight + 0.2 * fresh[0].weight)
    record = ctx.records["shrink_perturb"]["step2"]
    assert record["bn"] == bn and record["bn_batches"] == (2 if bn == "reestimate" else 0)
    if bn == "reset":
        assert torch.equal(model[1].running_mean, torch.zeros(8))
    else:
        assert int(model[1].num_batches_tracked) == 2


@pytest.mark.parametrize("other", ["aod", "scratch"])
def test_conflicts_are_one_sentence(other: str) -> None:
    with pytest.raises(UsageError, match=f"shrink_perturb and {other}"):
        load_plugins(["shrink_perturb", other])  # the combination is refused when the plugins load


def test_two_steps_through_the_cli(tiny_values: dict[str, Any]) -> None:
    out = Path(tiny_values["out"])
    args = ["run", "--plugins", "shrink_perturb", "--sp-shrink", "0.4", "--sp-perturb", "0.1", "--dataset",
            "synthetic", "--steps", "2", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--threads", "1",
            "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "results.json").read_text())["steps"]) == 2
    records = torch.load(out / "checkpoints" / "step2_learn.pt", weights_only=True)["records"]["shrink_perturb"]
    assert set(records) == {"step2"} and records["step2"]["bn_batches"] > 0
