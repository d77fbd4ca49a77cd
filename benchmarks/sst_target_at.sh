#!/usr/bin/env bash
# Choose --sparsity-target-at on the validation split (500 training images per class held out).
set -e
T="${TOOLBOX:-toolbox}"
COMMON="--dataset fashion_mnist --per-class 125 --val-per-class 500 --batch-size 128 --lr 0.05 --weight-decay 5e-4 --precision bf16 --threads 2"
mkdir -p "${OUT:-runs/hp}" && cd "${OUT:-runs/hp}"
[ -f learn/checkpoints/step1_learn.pt ] || $T train --phase learn --epochs 15 $COMMON --out learn
for at in 1.0 0.75 0.5 0.25; do
  [ -f sst_at$at/results.json ] || $T train --init learn/checkpoints/step1_learn.pt --phase sparsify --plugins sst --epochs 15 $COMMON --sparsity-target-at $at --out sst_at$at
done
[ -f sub/results.json ] || $T train --init learn/checkpoints/step1_learn.pt --phase sparsify --plugins sst --epochs 15 $COMMON --sst-mode subgradient --out sub
python3 - <<'PY'
import json, glob
for d in ["learn"] + sorted(glob.glob("sst_at*")) + ["sub"]:
    r = json.load(open(f"{d}/results.json"))["steps"][0]["phases"][-1]
    print(f"{d:12s} val_top1 {r['val_top1']:.2f}  test_top1 {r['top1']:.2f}  sparsity {r.get('sparsity')}")
PY
