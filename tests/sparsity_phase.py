"""Drive a sparsity plugin's hooks through one phase, as the engine does, on random data."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toolbox.context import Context
from toolbox.sparsity.training import SparsityTraining


def run_sparsity_phase(plugin: SparsityTraining, ctx: Context, batches: int, lr: float = 0.1) -> None:
    """``ctx.epochs`` epochs of SGD over ``batches`` random batches, calling every hook in order.

    Each epoch end must report the plugin's ``{prefix}_s`` and ``{prefix}_ratio`` metrics.
    """
    torch.manual_seed(1)
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(batches)]
    ctx.optimizer = torch.optim.SGD(ctx.model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    plugin.toolbox_phase_start(ctx=ctx)
    for epoch in range(ctx.epochs):
        ctx.epoch = epoch
        plugin.toolbox_epoch_start(ctx=ctx)
        for x, y in data:
            loss = F.cross_entropy(ctx.model(x), y)
            ctx.optimizer.zero_grad()
            loss.backward()
            plugin.toolbox_regularize(ctx=ctx, model=ctx.model)
            ctx.optimizer.step()
            plugin.toolbox_batch_end(ctx=ctx, model=ctx.model)
        metrics: dict[str, float] = {}
        plugin.toolbox_epoch_end(ctx=ctx, metrics=metrics)
        assert {f"{plugin.prefix}_s", f"{plugin.prefix}_ratio"} <= set(metrics)
    plugin.toolbox_phase_end(ctx=ctx)
