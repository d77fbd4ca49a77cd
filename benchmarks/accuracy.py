"""Accuracy benchmark: sst,aod,msl against fine-tuning, LwF and joint training, over seeds.

    python benchmarks/accuracy.py [--protocol primary|single|secondary] [--seeds 0,1,2]
                                  [--only METHOD[,METHOD]] [--out runs/accuracy] [--quick]

Protocols (PAPER.md, "The CPU protocol"; Fashion-MNIST stands in for CIFAR-100):
- primary: 4 shards of 125 images per class, 30 epochs per phase, full test set after every step;
- single: the same with 2 shards (the single-step experiment);
- secondary: the full 15,000-image shards, 3 epochs per phase.
``--dataset cifar100 --data-root DIR --arch cifar_resnet110`` runs the same rows on CIFAR-100.

Rows: the method (``sst,aod,msl``), ``finetune`` with the method's epochs per phase, ``finetune``
with the method's total epochs per step (two phases per step -> twice the epochs), ``lwf`` and
``joint`` (the upper bound that needs the old data). Every row of a seed shares the shards, the
step-1 initialization and the batch order (same seed), so differences are paired per seed.
Each run lives in ``<out>/<protocol>/<row>/seed<k>/``: a killed benchmark picks up where it
stopped (finished runs are skipped, interrupted ones resumed), and ``--only`` reruns one row
(delete its directory first to start it afresh). The comparison table, CSV, JSON and the top-1
vs step plot with error bands are written to ``<out>/<protocol>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from toolbox.report import rows_markdown, write_comparison
from toolbox.run import resume_run, start_run

PROTOCOLS: dict[str, dict[str, Any]] = {
    "primary": {"steps": 4, "per_class": 125, "epochs": 30},
    "single": {"steps": 2, "per_class": 125, "epochs": 30},
    "secondary": {"steps": 4, "per_class": None, "epochs": 3},
}
COMMON: dict[str, Any] = {"dataset": "fashion_mnist", "arch": "cifar_resnet20", "batch_size": 128,
                          "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine", "precision": "bf16"}
QUICK: dict[str, Any] = {"dataset": "synthetic", "steps": 3, "per_class": None, "epochs": 1,
                         "batch_size": 64, "precision": "fp32"}


def rows(epochs: int) -> dict[str, dict[str, Any]]:
    """The benchmark's rows: run options that differ between methods."""
    return {
        "sst_aod_msl": {"plugins": ["sst", "aod", "msl"]},
        "finetune": {"plugins": ["finetune"]},
        "finetune_2x": {"plugins": ["finetune"], "epochs": 2 * epochs},
        "lwf": {"plugins": ["lwf"]},
        "joint": {"plugins": ["joint"]},
    }


def run_row(values: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Finish one run: skip it when complete, resume it when interrupted, else start it."""
    results_file = run_dir / "results.json"
    if results_file.is_file():
        results = json.loads(results_file.read_text())
        if len(results["steps"]) == values["steps"] and _complete(run_dir, results):
            return results
    if (run_dir / "config.yaml").is_file():
        return resume_run(run_dir).execute()
    return start_run({**values, "out": str(run_dir)}).execute()


def _complete(run_dir: Path, results: dict[str, Any]) -> bool:
    """A run is complete when its last step has a checkpoint of its last phase."""
    last = results["steps"][-1]
    phase = last["phases"][-1]["phase"]
    return (run_dir / "checkpoints" / f"step{last['step']}_{phase}.pt").is_file()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run (or finish) the benchmark and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="primary")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default=None, help="comma-separated rows to run (default: all)")
    parser.add_argument("--out", default="runs/accuracy")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--arch", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny synthetic run (for tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    base = {**COMMON, **PROTOCOLS[args.protocol], **(QUICK if args.quick else {})}
    for key in ("dataset", "data_root", "arch"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    table = rows(base["epochs"])
    chosen = args.only.split(",") if args.only else list(table)
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; rows are {', '.join(table)}")
    out = Path(args.out) / args.protocol
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        for name in chosen:
            values = {**base, **table[name], "seed": seed}
            results = run_row(values, out / name / f"seed{seed}")
            summary = ", ".join(f"{s['top1']:.2f}" for s in results["steps"])
            print(f"{args.protocol} {name} seed {seed}: top-1 per step {summary}", flush=True)
    report_rows = write_comparison([out], out)
    print(rows_markdown(report_rows))
    return report_rows


if __name__ == "__main__":
    main()
