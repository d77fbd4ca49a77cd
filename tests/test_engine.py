"""Engine pieces: learning-rate schedules, top-k, evaluation, the loop's numerics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from toolbox.options import RunOptions
from toolbox.run.engine import evaluate, lr_at, topk_correct


def test_cosine_schedule_with_warmup() -> None:
    options = RunOptions(lr=0.1, warmup_epochs=2, warmup_lr=0.01, schedule="cosine")
    assert lr_at(0, options, 10) == pytest.approx(0.01)
    assert lr_at(1, options, 10) == pytest.approx(0.055)
    assert lr_at(2, options, 10) == pytest.approx(0.1)
    assert lr_at(6, options, 10) == pytest.approx(0.05)
    assert lr_at(10, options, 10) == pytest.approx(0.0, abs=1e-12)


def test_multistep_and_constant_schedules() -> None:
    options = RunOptions(lr=0.1, schedule="multistep", milestones=[0.5, 0.75], lr_decay=0.1)
    assert lr_at(4.9, options, 10) == pytest.approx(0.1)
    assert lr_at(5.0, options, 10) == pytest.approx(0.01)
    assert lr_at(8.0, options, 10) == pytest.approx(0.001)
    assert lr_at(3.3, RunOptions(lr=0.2, schedule="constant"), 10) == 0.2


def test_topk_counts() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    targets = torch.tensor([1, 1, 0])
    top1, top2 = topk_correct(logits, targets, ks=(1, 2))
    assert top1.item() == 1 and top2.item() == 2
    # k larger than the number of classes counts every sample
    assert topk_correct(logits, targets, ks=(5,))[0].item() == 3


def test_evaluate_matches_hand_computation() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    x = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    y = torch.tensor([1, 2, 0])
    result = evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])], torch.device("cpu"))
    expected = nn.functional.cross_entropy(x, y).item()
    assert result["top1"] == pytest.approx(100 / 3)
    assert result["top5"] is None  # three classes: top-5 would be 100 % by definition
    assert math.isclose(result["loss"], expected, rel_tol=1e-6)
    assert model.training  # restored


class NaNAtSecondBatch:
    """A plugin whose loss term turns NaN on the second batch of every epoch."""

    from toolbox.hookspecs import hookimpl as _impl

    @_impl
    def toolbox_loss(self, ctx, batch, logits):  # noqa: ANN001, D102
        value = float("nan") if ctx.batch_index == 1 else 0.0
        return {"bad": logits.sum() * 0 + value}


def test_nan_loss_stops_the_phase_naming_where(tiny_values: dict) -> None:
    from toolbox.run.engine import NumericError
    from toolbox.run.start import start_run

    run = start_run({**tiny_values, "steps": 2}, extra_plugins={"nan": NaNAtSecondBatch()})
    with pytest.raises(NumericError, match=r"step 1, phase learn, epoch 1, batch 2 \(non-finite terms: bad"):
        run.execute()
    assert not (run.run_dir / "checkpoints" / "step1_learn.pt").exists()


def test_skip_nonfinite_skips_bad_batches(tiny_values: dict) -> None:
    import json

    from toolbox.run.start import start_run

    run = start_run({**tiny_values, "steps": 1, "skip_nonfinite": "true"}, extra_plugins={"nan": NaNAtSecondBatch()})
    results = run.execute()
    assert results["steps"][0]["top1"] >= 0
    epochs = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs[0]["skipped_batches"] == 1.0


def test_gradient_norm_matches_manual() -> None:
    from toolbox.run.engine import gradient_norm

    layer = nn.Linear(3, 2)
    layer.weight.grad = torch.ones(2, 3)
    layer.bias.grad = torch.full((2,), 2.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    assert gradient_norm(optimizer).item() == pytest.approx((6 + 8) ** 0.5)
