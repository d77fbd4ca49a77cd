"""ewc: the Fisher, the online update, the penalty and its gradient, the plugin, resume after a kill, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from run_compare import comparable, metric_lines
from test_reliability import run_with_kills
from torch import nn
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.context import Context
from toolbox.errors import UsageError
from toolbox.methods.ewc import diagonal_fisher, ewc_penalty, online_update
from toolbox.options import RunOptions
from toolbox.plugin_host.manager import load_plugins
from toolbox.run.start import start_run
from toolbox_plugins.ewc import EWC


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (3, 2)]


def loop_fisher(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], predictions: bool) -> dict:
    """Squared gradients of log p(y|x) one sample at a time (the definition)."""
    model.eval()
    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    count = 0
    for x, y in data:
        for i in range(x.shape[0]):
            model.zero_grad()
            logits = model(x[i:i + 1])
            label = logits.argmax(1) if predictions else y[i:i + 1]
            F.log_softmax(logits, 1)[0, label[0]].backward()
            for n, p in model.named_parameters():
                sums[n] += p.grad ** 2
            count += 1
    return {n: s / count for n, s in sums.items()}


@pytest.mark.parametrize("targets", ["labels", "predictions"])
def test_fisher_is_the_mean_squared_per_sample_gradient(targets: str) -> None:
    model = tiny_net().train()
    model(torch.randn(8, 1, 4, 4))  # non-trivial running statistics
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fisher = diagonal_fisher(model, batches(), targets)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    expected = loop_fisher(model, batches(), targets == "predictions")
    assert fisher.keys() == expected.keys()
    for name in fisher:
        assert torch.allclose(fisher[name], expected[name], rtol=1e-4, atol=1e-7), name


def test_online_update_decays_the_earlier_estimate() -> None:
    first, second = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 0.0])}
    assert torch.equal(online_update(None, first, 0.9)["w"], first["w"])
    assert torch.allclose(online_update(first, second, 0.9)["w"], torch.tensor([1.4, 1.8]))


def test_penalty_and_its_gradient() -> None:
    model = tiny_net()
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    anchor = {n: p.detach() + torch.randn_like(p) for n, p in model.named_parameters()}
    penalty = ewc_penalty(model, fisher, anchor, 3.0)
    by_hand = sum((fisher[n] * (p.detach() - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
    assert penalty.item() == pytest.approx(1.5 * by_hand.item(), rel=1e-5)
    penalty.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, 3.0 * fisher[n] * (p.detach() - anchor[n]), atol=1e-6)
    at_anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert ewc_penalty(model, fisher, at_anchor, 3.0).item() == 0.0


def test_the_plugin_estimates_at_each_steps_end_and_penalizes_later_steps() -> None:
    options = RunOptions(plugins=["ewc"], steps=3, plugin={"ewc_lambda": 2.0, "ewc_gamma": 0.5})
    plugin = EWC()
    plugin.toolbox_configure(options=options)
    model, records = tiny_net(), {}

    def context(step: int, phase: str) -> Context:
        return Context(options=options, model=model, device=torch.device("cpu"), step=step, num_steps=3, phase=phase,
                       step_phases=("learn", "sparsify"), records=records, batch_source=batches)

    x, y = batches()[0]
    for phase in ("learn", "sparsify"):
        ctx = context(1, phase)
        plugin.toolbox_phase_start(ctx=ctx)
        assert plugin.toolbox_loss(ctx=ctx) is None
        plugin.toolbox_phase_end(ctx=ctx)
        assert ("ewc" in records) == (phase == "sparsify")  # only at the step's last phase
    first = diagonal_fisher(model, batches())
    assert records["ewc"]["steps"] == [1]
    with torch.no_grad():
        model[4].weight.add_(0.1)
    ctx = context(2, "learn")
    plugin.toolbox_phase_start(ctx=ctx)
    term = plugin.toolbox_loss(ctx=ctx)["ewc_penalty"]
    assert term.item() == pytest.approx(ewc_penalty(model, first, records["ewc"]["anchor"], 2.0).item())
    assert term.item() > 0
    plugin.toolbox_phase_end(ctx=ctx)  # not the step's last phase: no update
    ctx = context(2, "sparsify")
    plugin.toolbox_phase_end(ctx=ctx)
    assert records["ewc"]["steps"] == [1, 2]
    for name, value in records["ewc"]["fisher"].items():
        assert torch.allclose(value, 0.5 * first[name] + diagonal_fisher(model, batches())[name], atol=1e-7)
    assert torch.equal(records["ewc"]["anchor"]["4.weight"], model[4].weight.detach())
    plugin.toolbox_phase_end(ctx=context(3, "sparsify"))  # the run's last step: nothing would use it
    assert records["ewc"]["steps"] == [1, 2]


def test_scratch_is_refused() -> None:
    with pytest.raises(UsageError, match="ewc and scratch cannot run together: scratch starts every step"):
        load_plugins(["ewc", "scratch"])  # the combination is refused when the plugins load


EWC_RUN = {"plugins": "ewc", "ewc_lambda": 5.0, "ewc_gamma": 0.5, "dataset": "synthetic", "arch": "cifar_resnet20",
           "steps": 3, "epochs": 2, "batch_size": 64, "device": "cpu", "threads": 1}


@pytest.mark.slow
def test_a_killed_run_resumes_with_fisher_and_anchor(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    expected = start_run({**EWC_RUN, "out": str(reference)}).execute()
    out = tmp_path / "killed"
    resumed = run_with_kills({**EWC_RUN, "out": str(out)}, [(2, "learn", 2, 1), (3, "learn", 2, 1)])
    assert comparable(resumed) == comparable(expected)
    assert metric_lines(out) == metric_lines(reference)
    penalties = [line["ewc_penalty"] for line in metric_lines(out) if "ewc_penalty" in line]
    assert len(penalties) == 4 and all(p > 0 for p in penalties)  # steps 2 and 3, two epochs each


def test_two_steps_through_the_cli(tiny_values: dict[str, Any]) -> None:
    out = Path(tiny_values["out"])
    args = ["run", "--plugins", "ewc", "--ewc-lambda", "10", "--ewc-gamma", "0.9", "--dataset", "synthetic",
            "--steps", "2", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--threads", "1",
            "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    steps = json.loads((out / "results.json").read_text())["steps"]
    assert len(steps) == 2 and steps[0]["phases"][0]["ewc_fisher_mean"] > 0
    assert [("ewc_penalty" in line) for line in metric_lines(out) if "epoch" in line] == [False, True]
