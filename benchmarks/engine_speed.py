"""Training throughput: the toolbox engine vs a plain PyTorch loop on the same tensors.

    python benchmarks/engine_speed.py [--arch cifar_resnet20] [--dataset fashion_mnist]
                                      [--batch-size 128] [--batches 60] [--repeats 3]

Both loops consume the same pre-augmented batches (made once, outside the timed region), so
the comparison isolates the loop itself: hook dispatch, metric bookkeeping, LR updates. Rows
cover NCHW vs channels_last and fp32 vs bf16 autocast. Each figure is the median of
``--repeats`` timed passes after one warm-up pass.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import timm
import torch
import torch.nn.functional as F

import toolbox  # noqa: F401  (registers the CIFAR backbones)
from toolbox.context import Context
from toolbox.data import BatchLoader, load_dataset
from toolbox.engine import Trainer, autocast_context, build_optimizer
from toolbox.options import RunOptions
from toolbox.plugins import make_manager


def make_batches(dataset: str, batch_size: int, count: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, int]:
    """``count`` augmented, normalized batches of the dataset's training set."""
    data = load_dataset(dataset)
    loader = BatchLoader(data.train_x, data.train_y, None, batch_size, data.mean, data.std, train=True, seed=0)
    loader.set_epoch(0)
    batches = []
    for x, y in loader:
        batches.append((x, y))
        if len(batches) == count:
            break
    return batches, data.num_classes, data.in_chans


def plain_loop(model: torch.nn.Module, batches: list, precision: str, channels_last: bool) -> None:
    """A hand-written SGD loop: forward, cross-entropy, backward, step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    device = torch.device("cpu")
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def engine_loop(model: torch.nn.Module, batches: list, precision: str, channels_last: bool) -> None:
    """The toolbox Trainer with no plugins over the same batches (one epoch)."""
    options = RunOptions(lr=0.05, precision=precision, channels_last=channels_last)
    ctx = Context(options=options, model=model, device=torch.device("cpu"), epochs=1)
    optimizer = build_optimizer(model, options)
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    Trainer(make_manager(), ctx).train(optimizer, lambda epoch: batches, len(batches))


def measure(loop: Callable, arch: str, batches: list, classes: int, chans: int, precision: str,
            channels_last: bool, repeats: int) -> float:
    """Median images/s of ``loop`` over ``repeats`` timed passes (after a warm-up pass)."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=classes, in_chans=chans)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    loop(model, batches[:5], precision, channels_last)
    rates = []
    images = sum(y.numel() for _, y in batches)
    for _ in range(repeats):
        started = time.perf_counter()
        loop(model, batches, precision, channels_last)
        rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    """Print a markdown table of img/s for each loop and setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches, classes, chans = make_batches(args.dataset, args.batch_size, args.batches)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{args.arch} on {args.dataset}, batch {args.batch_size}, {len(batches)} batches x {args.repeats}")
    print("| layout | precision | plain loop img/s | engine img/s | engine / plain |")
    print("|---|---|---:|---:|---:|")
    for channels_last in (False, True):
        for precision in ("fp32", "bf16"):
            plain = measure(plain_loop, args.arch, batches, classes, chans, precision, channels_last, args.repeats)
            engine = measure(engine_loop, args.arch, batches, classes, chans, precision, channels_last, args.repeats)
            layout = "channels_last" if channels_last else "NCHW"
            print(f"| {layout} | {precision} | {plain:.0f} | {engine:.0f} | {engine / plain:.3f} |", flush=True)


if __name__ == "__main__":
    main()
