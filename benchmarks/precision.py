"""fp32 against bf16 autocast on the accuracy benchmark's runs, paired by seed.

    python benchmarks/accuracy.py --protocol primary --only sst_aod_msl,finetune_2x --precision bf16 --out runs/acc-bf16
    python benchmarks/accuracy.py --protocol primary --only sst_aod_msl,finetune_2x --precision fp32 --out runs/acc-fp32
    python benchmarks/precision.py [--bf16 benchmarks/records/acc-bf16/primary] [--fp32 benchmarks/records/acc-fp32/primary]

Reads the finished runs' results (run directories or the benchmark's records: ``<row>/seed<k>.json``
or ``<row>/seed<k>/results.json``) and prints, per row and step, top-1 mean ± std over the seeds
for each precision, the paired difference bf16 - fp32 (mean ± std, seeds where bf16 is ahead)
and whether the difference lies within the seed spread (|mean difference| <= the larger of the
two standard deviations): the rule that decides whether bf16 is free.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent


def read_runs(folder: Path, row: str) -> dict[int, dict[str, Any]]:
    """The finished runs of ``row`` in ``folder``, by seed."""
    runs = {}
    for path in sorted((folder / row).glob("seed*")):
        file = path if path.suffix == ".json" else path / "results.json"
        if file.is_file():
            results = json.loads(file.read_text())
            runs[int(results["config"]["seed"])] = results
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(bf16: Path, fp32: Path, rows: list[str]) -> tuple[str, bool]:
    """The markdown table and whether bf16 agrees with fp32 within the seed spread everywhere."""
    lines = ["| row | step | seeds | fp32 top-1 | bf16 top-1 | bf16 - fp32 (paired) | bf16 ahead | within spread |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    agree = True
    for row in rows:
        low, full = read_runs(bf16, row), read_runs(fp32, row)
        seeds = sorted(set(low) & set(full))
        if not seeds:
            continue
        steps = min(min(len(low[s]["steps"]), len(full[s]["steps"])) for s in seeds)
        for index in range(steps):
            a = [full[s]["steps"][index]["top1"] for s in seeds]
            b = [low[s]["steps"][index]["top1"] for s in seeds]
            diff = [y - x for x, y in zip(a, b)]
            (ma, sa), (mb, sb), (md, sd) = _mean_std(a), _mean_std(b), _mean_std(diff)
            within = abs(md) <= max(sa, sb)
            agree &= within
            lines.append(f"| {row} | {index + 1} | {len(seeds)} | {ma:.2f} ± {sa:.2f} | {mb:.2f} ± {sb:.2f} | "
                         f"{md:+.2f} ± {sd:.2f} | {sum(d > 0 for d in diff)}/{len(diff)} | {'yes' if within else '**no**'} |")
    return "\n".join(lines), agree


def main(argv: list[str] | None = None) -> bool:
    """Print the table and the verdict; return whether bf16 agrees everywhere."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", type=Path, default=ROOT / "records" / "acc-bf16" / "primary")
    parser.add_argument("--fp32", type=Path, default=ROOT / "records" / "acc-fp32" / "primary")
    parser.add_argument("--rows", default="sst_aod_msl,finetune_2x")
    args = parser.parse_args(argv)
    table, agree = compare(args.bf16, args.fp32, args.rows.split(","))
    print(table)
    print(f"\nbf16 agrees with fp32 within the seed spread at every step: {'yes' if agree else 'no'}")
    return agree


if __name__ == "__main__":
    main()
