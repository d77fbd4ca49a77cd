"""Compaction: MACs ratio vs measured CPU latency ratio, and what the removal costs in outputs.

    python benchmarks/compact.py [--archs cifar_resnet56,cifar_resnet110,cifar_mobilenetv2]
                                 [--ratios 0.3,0.5,0.7] [--threads 2] [--repeats 3]
                                 [--round-to 1] [--nchw] [--out FILE.md]

For every backbone (option-B ResNets, CIFAR MobileNetV2; random initialization with BN scales
drawn from U(0.05, 1) and shifts from N(0, 0.1), so BN-scale importance has something to rank)
and every ratio r: the fraction r of filters with the smallest BN |gamma| (torch-pruning's
BN-scale importance, ranked globally) get gamma = 0 (the "masked" model, what SST leaves), then
:func:`toolbox.pruning.compaction.compact` removes them. Reported: MACs ratio (after / before, counted by
torch-pruning at 32x32), CPU latency at batch 256 and batch 1 (channels_last unless ``--nchw``;
after a warm-up pass, the models of one backbone are timed in interleaved rounds so that load
from other processes on the shared cores hits all of them alike: ``--repeats`` rounds of one
pass at batch 256, 2x as many rounds of 5 passes at batch 1; medians), their quotient (target: latency
ratio within 1.2x of the MACs ratio at batch 256), and the top-1 agreement and largest logit
difference between masked and compact models on the synthetic test set (200 images). No
trained model is used: training ResNet-110 on 2 CPU cores is not cheap, and the compaction is
exact for zero gammas, so "top-1 change" between masked and compact is the agreement measured
here; the accuracy cost of zeroing gammas is SST's, measured in the pipeline benchmark.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from torch import nn

import toolbox  # noqa: F401  (registers the CIFAR backbones)
from toolbox.data import load_dataset
from toolbox.pruning.compaction import compact
from toolbox.pruning.cost import cost
from toolbox.sparsity import channels as ch

INPUT = (3, 32, 32)


def random_model(arch: str, seed: int = 0) -> nn.Module:
    """A randomly initialized backbone whose BN scales/shifts are spread out (seeded)."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=10).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.95 + 0.05)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def masked_model(model: nn.Module, ratio: float) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy with the ``ratio`` smallest-|gamma| filters' scales set to 0, and their masks."""
    masked = copy.deepcopy(model)
    graph = ch.channel_groups(masked, example_inputs=torch.zeros(1, *INPUT))
    selection = ch.select_smallest(ch.unit_importance(masked, graph), ratio)
    masks = ch.selection_to_masks(masked, graph, selection)
    with torch.no_grad():
        for name, mask in masks.items():
            ch.module(masked, name).weight[mask] = 0.0
    return masked, masks


@torch.no_grad()
def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement (%) and the largest |logit difference| of two models on ``x``."""
    ya, yb = a.eval()(x), b.eval()(x)
    return 100.0 * float((ya.argmax(1) == yb.argmax(1)).float().mean()), float((ya - yb).abs().max())


@torch.no_grad()
def interleaved_latency(models: list[nn.Module], batch_size: int, rounds: int, passes: int,
                        channels_last: bool) -> list[float]:
    """Median ms per forward of each model, timed in interleaved rounds.

    Every round times each model once (the mean of ``passes`` forwards), so a neighbour's load on
    the shared cores hits all models alike; the result is the median over ``rounds``.
    """
    x = torch.randn((batch_size, *INPUT), generator=torch.Generator().manual_seed(0))
    timed = [copy.deepcopy(m).eval() for m in models]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        timed = [m.to(memory_format=torch.channels_last) for m in timed]
    for m in timed:
        m(x)
    samples: list[list[float]] = [[] for _ in timed]
    for _ in range(rounds):
        for i, m in enumerate(timed):
            start = time.perf_counter()
            for _ in range(passes):
                m(x)
            samples[i].append((time.perf_counter() - start) / passes * 1e3)
    return [statistics.median(v) for v in samples]


def main() -> None:
    """Run the benchmark and print / write the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="cifar_resnet56,cifar_resnet110,cifar_mobilenetv2")
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--round-to", type=int, default=1, help="compact(round_to=...): widths multiples of this")
    parser.add_argument("--nchw", dest="channels_last", action="store_false",
                        help="time NCHW tensors (default: channels_last, the toolbox's default format)")
    parser.add_argument("--out", default=None, help="also write the table (with command and machine) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("synthetic")
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    x = (data.test_x.float() / 255 - mean) / std
    header = ("| model | r | MACs (M) | MACs ratio | params ratio | latency b256 ms | ratio b256 | "
              "b256 ratio / MACs ratio | latency b1 ms | ratio b1 | carriers | top-1 agreement % | max abs logit diff |")
    rows = [header, "|" + "---|" * 13]
    started = time.perf_counter()
    for arch in args.archs.split(","):
        base = random_model(arch)
        macs0, params0 = cost(base, INPUT)
        models, stats = [base], [(0.0, macs0, params0, 0, "-", "-")]
        for r in [float(v) for v in args.ratios.split(",")]:
            masked, masks = masked_model(base, r)
            small, record = compact(masked, masks=masks, example_inputs=torch.zeros(1, *INPUT),
                                    round_to=args.round_to)
            macs, params = cost(small, INPUT)
            agree, diff = agreement(masked, small, x)
            models.append(small)
            stats.append((r, macs, params, record["compactions"][0]["carriers"], f"{agree:.1f}", f"{diff:.1e}"))
        t256 = interleaved_latency(models, 256, args.repeats, 1, args.channels_last)
        t1 = interleaved_latency(models, 1, args.repeats * 2, 5, args.channels_last)
        for (r, macs, params, carriers, agree, diff), b256, b1 in zip(stats, t256, t1):
            ratio256 = b256 / t256[0]
            rows.append(f"| {arch} | {r:g} | {macs / 1e6:.1f} | {macs / macs0:.3f} | {params / params0:.3f} | "
                        f"{b256:.0f} | {ratio256:.3f} | {ratio256 / (macs / macs0):.2f} | {b1:.2f} | "
                        f"{b1 / t1[0]:.3f} | {carriers} | {agree} | {diff} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print()
    print(table)
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s")
    if args.out:
        machine = (f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                   f"{platform.python_implementation()} {platform.python_version()}")
        command = "python " + " ".join(sys.argv)
        Path(args.out).write_text(f"## Compaction (torch-pruning)\n\nCommand: `{command}`  \nMachine: {machine}; "
                                  f"{elapsed:.0f} s.\n\n{table}\n")


if __name__ == "__main__":
    main()
