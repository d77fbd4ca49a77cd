"""Training speed with 1 vs N processes (torchrun, gloo on CPU) on the same run and cores.

    python benchmarks/distributed_speed.py [--processes 1,2] [--cores 2] [--arch cifar_resnet20]
        [--dataset fashion_mnist] [--per-class 500] [--epochs 3] [--batch-size 128]
        [--plugins ''] [--precision fp32] [--keep DIR]

Runs the same ``toolbox run`` (one step, ``--steps 1``) once per process count: one process
with ``--threads CORES``, N processes under ``torchrun --nproc_per_node N --standalone`` with
``--threads CORES // N`` each, so every row uses the same cores and the same global batch.
Reported per row: the training images per second (global images / rank 0's epoch seconds,
from ``metrics.jsonl``; the median over epochs after the first, which includes start-up
effects), the phase's ``train_seconds``, the command's wall time (start-up, data loading,
evaluation and checkpoints included) and the speed-up over the first row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def run_once(processes: int, threads: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """One ``toolbox run`` with ``processes`` processes of ``threads`` threads; its timings."""
    command = [sys.executable, "-m", "toolbox.cli"]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--standalone", "-m", "toolbox.cli"]
    command += ["run", "--arch", args.arch, "--dataset", args.dataset, "--steps", "1", "--epochs", str(args.epochs),
                "--batch-size", str(args.batch_size), "--precision", args.precision, "--device", "cpu",
                "--threads", str(threads), "--seed", "0", "--out", str(out)]
    if args.per_class:
        command += ["--per-class", str(args.per_class)]
    if args.plugins:
        command += ["--plugins", args.plugins]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [e["images_per_second"] for e in epochs if "images_per_second" in e]
    results = json.loads((out / "results.json").read_text())
    return {"img_s": statistics.median(speeds[1:] or speeds), "train_s": results["steps"][0]["train_seconds"],
            "wall_s": wall, "top1": results["steps"][0]["top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts; the first is the baseline")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads shared by the processes of a row")
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--per-class", type=int, default=500, help="training images per class (0: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--plugins", default="", help="e.g. sst,aod,msl (step 1 then also runs sparsify)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    counts = [int(c) for c in args.processes.split(",")]
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.cores} cores per row; {args.arch} on {args.dataset}, {args.per_class or 'all'} images per class, "
          f"{args.epochs} epochs, global batch {args.batch_size}, {args.precision}, plugins: {args.plugins or 'none'}")
    print("| processes | threads each | img/s | train s | wall s | top-1 % | speed-up (img/s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        for n in counts:
            threads = max(args.cores // n, 1)
            row = run_once(n, threads, args, folder / f"p{n}")
            base = base or row["img_s"]
            print(f"| {n} | {threads} | {row['img_s']:.0f} | {row['train_s']:.1f} | {row['wall_s']:.1f} | "
                  f"{row['top1']:.2f} | {row['img_s'] / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
