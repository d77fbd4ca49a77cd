"""Independent runs side by side: one process with N threads against N processes with 1 thread.

    python benchmarks/side_by_side.py [--layouts 1x2,2x1] [--arch cifar_resnet20]
                                      [--dataset fashion_mnist] [--batch-size 128] [--batches 40]
                                      [--rounds 3] [--precision bf16] [--out runs/side_by_side.json]

The question a user with several independent runs (seeds, rows of a comparison, tuning trials) on
a small CPU asks: start them one after another with all cores each, or side by side with one core
each? A layout ``PxT`` starts P worker processes of T threads each; every worker trains the plain
SGD loop of ``throughput.py`` (same model, batch size and precision, on pre-made random batches of
the dataset's shape, so only the training is timed), warms up, waits for a common start signal and
then times ``--batches`` batches. A layout's figure is the total img/s of all its workers: all
images over the time from the first worker's start to the last worker's end. Layouts alternate
over ``--rounds`` rounds in a rotating order (this machine drifts), and the median is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import new_model, plain_loop  # noqa: E402

import toolbox  # noqa: E402,F401  (registers the CIFAR backbones)
from toolbox.data import load_dataset  # noqa: E402

WARMUP = 3
POLL_S = 0.005


def parse_layout(text: str) -> tuple[int, int]:
    """``"2x1"`` -> (2 processes, 1 thread each)."""
    try:
        processes, threads = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"a layout is PROCESSESxTHREADS, e.g. 2x1; got {text!r}") from None
    if processes < 1 or threads < 1:
        raise ValueError(f"a layout needs at least 1 process and 1 thread; got {text!r}")
    return processes, threads


def worker(args: argparse.Namespace) -> dict[str, float]:
    """One worker: build, warm up, signal ready, wait for the start file, time the batches."""
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_root, download=False)
    model = new_model(args.arch, data, channels_last=True)
    shape = (args.batch_size, data.in_chans, data.image_size, data.image_size)
    batches = [(torch.randn(shape), torch.randint(0, data.num_classes, (args.batch_size,)))
               for _ in range(args.batches)]
    train = plain_loop(model, args.precision, channels_last=True)
    train(batches[:WARMUP])
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(POLL_S)
    started = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes of the machine
    train(batches)
    return {"start": started, "end": time.monotonic(), "images": float(args.batches * args.batch_size)}


def run_layout(args: argparse.Namespace, processes: int, threads: int) -> float:
    """Total img/s of ``processes`` workers of ``threads`` threads each, started together."""
    with tempfile.TemporaryDirectory() as folder:
        go = Path(folder) / "go"
        readies = [Path(folder) / f"ready{k}" for k in range(processes)]
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads),
                   "--arch", args.arch, "--batch-size", str(args.batch_size), "--batches", str(args.batches),
                   "--precision", args.precision, "--dataset", args.dataset, "--go", str(go),
                   *(["--data-root", args.data_root] if args.data_root else [])]
        children = [subprocess.Popen([*command, "--ready", str(ready)], stdout=subprocess.PIPE, text=True)
                    for ready in readies]
        while not all(ready.exists() for ready in readies):
            if any(child.poll() not in (None, 0) for child in children):
                raise RuntimeError("a side-by-side worker failed before it was ready (see its stderr above)")
            time.sleep(POLL_S)
        go.touch()
        results = []
        for child in children:
            out, _ = child.communicate()
            if child.returncode != 0:
                raise RuntimeError(f"a side-by-side worker exited with status {child.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    return sum(r["images"] for r in results) / elapsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's arguments (``--worker`` and the ones after it are internal)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", default="1x2,2x1", help="comma-separated PROCESSESxTHREADS")
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per worker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--out", default="runs/side_by_side.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time every layout, print a markdown table and write the JSON record."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    layouts = [parse_layout(text) for text in args.layouts.split(",")]
    load_dataset(args.dataset, args.data_root, download=False)  # a missing dataset fails here, not in a worker
    rates: dict[str, list[float]] = {f"{p}x{t}": [] for p, t in layouts}
    for index in range(args.rounds):
        for p, t in layouts[index % len(layouts):] + layouts[:index % len(layouts)]:
            rates[f"{p}x{t}"].append(run_layout(args, p, t))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians[next(iter(medians))]
    print(f"| layout (processes x threads) | total img/s | vs {next(iter(medians))} |\n|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:,.0f} | {value / base:.2f}x |")
    record = {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "ready", "go")},
              "img_per_s": medians, "rounds": rates}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
