"""Test top-1 right after shrink-and-perturb: stale, re-estimated and reset BatchNorm statistics.

    python benchmarks/shrink_perturb_bn.py RUN_DIR [--shrink 0.4] [--perturb 0.1]

Reads the step-1 learn checkpoint of a finished run (any plugins), applies shrink-and-perturb
with a fresh model drawn from step 2's learn-phase seed (as the plugin does), and evaluates on the
test set with the stored (stale) statistics, with statistics re-estimated on step 2's shard
(unaugmented), and with reset statistics (FINDINGS 12). The run is reopened as `--resume` would, and nothing is trained.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from toolbox.methods import bn_statistics as batchnorm
from toolbox.methods.shrink_perturb import shrink_perturb_
from toolbox.run.engine import evaluate
from toolbox.run.run import phase_seed, run_phases
from toolbox.run.start import resume_run
from toolbox.storage import checkpoint as ckpt


def main() -> None:
    """Print the three test top-1 values."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--shrink", type=float, default=0.4)
    parser.add_argument("--perturb", type=float, default=0.1)
    args = parser.parse_args()
    run = resume_run(args.run_dir)
    model = run.to_device(ckpt.load_phase_model(args.run_dir, 1, "learn"))
    torch.manual_seed(phase_seed(run.options.seed, 2, run_phases(run.pm)["learn"]))
    shrink_perturb_(model, run.fresh_model(), args.shrink, args.perturb)
    variants = {"stale": copy.deepcopy(model), "reestimated": copy.deepcopy(model), "reset": copy.deepcopy(model)}
    x, y, indices = run.inputs.training_set(2, None)
    batchnorm.reestimate(variants["reestimated"], run.inputs.plain_loader(x, y, indices))
    batchnorm.reset(variants["reset"])
    before = evaluate(run.to_device(ckpt.load_phase_model(args.run_dir, 1, "learn")), run.inputs.test_loader(),
                      run.device)["top1"]
    print(f"step-1 model: {before:.2f} %")
    for name, variant in variants.items():
        top1 = evaluate(variant, run.inputs.test_loader(), run.device)["top1"]
        print(f"after shrink {args.shrink} / perturb {args.perturb}, BN statistics {name}: {top1:.2f} %")


if __name__ == "__main__":
    main()
