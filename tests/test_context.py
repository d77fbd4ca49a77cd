"""Context.infer / teacher_logits: an inference pass in the student's precision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolbox.context import Context
from toolbox.options import RunOptions


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_teacher_runs_without_graph_in_the_students_precision(precision: str, dtype: torch.dtype) -> None:
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    seen: list[torch.dtype] = []
    teacher[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    inputs = torch.randn(2, 3, 8, 8)
    teacher(inputs)  # materialize the lazy layer
    seen.clear()
    ctx = Context(options=RunOptions(precision=precision), model=teacher, device=torch.device("cpu"), teacher=teacher)
    logits = ctx.teacher_logits(inputs)
    assert seen == [dtype]  # the conv ran under the student's autocast
    assert logits.dtype == torch.float32 and logits.grad_fn is None and not logits.requires_grad
    assert ctx.teacher_logits(inputs) is logits and seen == [dtype]  # once per batch
    ctx.new_batch()
    ctx.teacher_logits(inputs)
    assert len(seen) == 2
