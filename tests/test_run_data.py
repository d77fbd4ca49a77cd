"""RunData.evaluate: a model whose loss is not finite is reported, not silently scored."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import nn

from toolbox.options import build_options
from toolbox.run.inputs import RunData


class Constant(nn.Module):
    """Logits of ``value`` for every image and class."""

    def __init__(self, classes: int, value: float) -> None:
        super().__init__()
        self.classes, self.value = classes, value
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], self.classes), self.value) + self.dummy


@pytest.mark.parametrize("value,warned", [(float("nan"), True), (0.0, False)])
def test_a_non_finite_loss_is_logged(tiny_values: dict[str, Any], caplog: pytest.LogCaptureFixture,
                                     value: float, warned: bool) -> None:
    options = build_options({**tiny_values, "val_per_class": 2}, {})
    data = RunData(options, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        _, scores = data.evaluate(Constant(data.data.num_classes, value), "fp32")
    lines = [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()]
    assert bool(lines) == warned
    if warned:
        assert "test_loss and val_loss" in lines[0]
