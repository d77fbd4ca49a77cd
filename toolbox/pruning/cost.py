"""What a model costs: parameters, multiply-accumulates (torch-pruning's counter) and CPU latency."""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Callable, Sequence

import torch
from torch import nn

from toolbox.models.modules import dummy_input
from toolbox.sparsity import channels as ch


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one image, measured by torch-pruning."""
    import torch_pruning as tp

    device = next(model.parameters()).device
    example = dummy_input(input_size, 1, device=device, zeros=True)
    was_training = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs)


@torch.no_grad()
def latency(model: nn.Module, input_size: Sequence[int], batch_size: int, repeats: int = 10,
            warmup: int | None = None, channels_last: bool = False) -> float:
    """Median seconds of one forward pass of ``batch_size`` images on the CPU (eval, no grad).

    A CPU copy of the model is timed (the model is not changed); ``warmup`` passes (default
    ``min(3, repeats)``, at least 1) run first. Uses the current ``torch.get_num_threads()``.
    """
    timed = copy.deepcopy(ch.unwrap(model)).cpu().eval()
    x = dummy_input(input_size, batch_size, seed=0)
    if channels_last:
        timed, x = timed.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    for _ in range(max(1, min(3, repeats) if warmup is None else warmup)):
        timed(x)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        timed(x)
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def cost(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """``(MACs of one image, parameters)`` of a CPU copy (the model itself is not touched)."""
    counted = copy.deepcopy(ch.unwrap(model)).cpu()
    return count_macs(counted, tuple(input_size)), count_params(counted)


def compaction_report(before: nn.Module, after: nn.Module, input_size: Sequence[int],
                      eval_fn: Callable[[nn.Module], float] | None = None, repeats: int = 10,
                      batch_sizes: Sequence[int] = (1, 256)) -> dict[str, float]:
    """Params, MACs, CPU latency (ms, per batch size) and top-1 before and after, with ratios.

    Keys: ``params_before/after/ratio``, ``macs_before/after/ratio``,
    ``latency_b{n}_ms_before/after`` and ``latency_b{n}_ratio`` for every ``n`` in
    ``batch_sizes`` (skipped when ``repeats`` is 0), and with ``eval_fn(model) -> top-1``:
    ``top1_before/after/change``. Every ratio is after / before; every value is a float.
    """
    report: dict[str, float] = {}
    (macs_b, params_b), (macs_a, params_a) = cost(before, input_size), cost(after, input_size)
    report.update(params_before=float(params_b), params_after=float(params_a), params_ratio=params_a / max(params_b, 1),
                  macs_before=float(macs_b), macs_after=float(macs_a), macs_ratio=macs_a / max(macs_b, 1))
    if repeats > 0:
        for n in batch_sizes:
            t_b = latency(before, input_size, n, repeats) * 1e3
            t_a = latency(after, input_size, n, repeats) * 1e3
            report.update({f"latency_b{n}_ms_before": t_b, f"latency_b{n}_ms_after": t_a,
                           f"latency_b{n}_ratio": t_a / t_b if t_b > 0 else math.nan})
    if eval_fn is not None:
        top_b, top_a = float(eval_fn(before)), float(eval_fn(after))
        report.update(top1_before=top_b, top1_after=top_a, top1_change=top_a - top_b)
    return report
