"""Learning without Forgetting baseline: KD towards the previous model in later learn phases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolbox.context import Context
from toolbox.errors import UsageError
from toolbox.methods.distillation import kd_loss
from toolbox.options import RunOptions
from toolbox.plugin_host.manager import load_plugins
from toolbox_plugins.lwf import LwF


def test_term_only_in_learn_phases_after_step_one() -> None:
    plugin = LwF()
    options = RunOptions(plugins=["lwf"], plugin={o.name: o.default for o in plugin.toolbox_options()} | {"alpha": 0.3})
    plugin.toolbox_configure(options=options)
    torch.manual_seed(0)
    model, teacher = nn.Linear(4, 3), nn.Linear(4, 3).eval().requires_grad_(False)
    x, y = torch.randn(5, 4), torch.zeros(5, dtype=torch.long)
    for step, phase, present in ((1, "learn", False), (2, "sparsify", False), (2, "learn", True), (4, "learn", True)):
        ctx = Context(options=options, model=model, device=torch.device("cpu"), step=step, phase=phase, teacher=teacher)
        terms = plugin.toolbox_loss(ctx=ctx, batch=(x, y), logits=model(x))
        assert (terms is not None) == present
        if present:
            expected = 0.3 * kd_loss(model(x), teacher(x), 4.0)
            assert terms["lwf_kd"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_options_shared_with_aod_and_validated() -> None:
    options = {o.name: (o.type, o.default) for o in LwF().toolbox_options()}
    assert options == {"T": (float, 4.0), "alpha": (float, 1.0), "teacher_bn": (str, "running")}
    with pytest.raises(UsageError, match="double-counts"):
        load_plugins(["lwf", "aod"])  # the combination is refused when the plugins load
    with pytest.raises(UsageError):
        LwF().toolbox_configure(options=RunOptions(plugins=["lwf"], plugin={"T": 0.0}))
