"""What a `toolbox step` user would have been served, for every row of a `toolbox compare` folder:
test top-1 of ``serve/current.pt`` after each step (the step's served model when the promotion gate
let it through, else the one served before it), mean ± std over seeds, and how many step models
the gate held back. Read from each run's results.json; nothing is trained.

    python benchmarks/served.py runs/compare-dirichlet
    python benchmarks/served.py benchmarks/records/compare-dirichlet   # the committed records

The gate judges on validation images only; the test top-1 here is what the results report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from toolbox.compare.compare import read_plan
from toolbox.run.results import mean_std


def served_top1(steps: list[dict[str, Any]]) -> list[float]:
    """Test top-1 of the model being served after each step."""
    current, served = None, []
    for step in steps:
        promotion = step.get("promotion")
        if current is None or promotion is None or promotion["promoted"]:
            current = (step.get("served") or step)["top1"]
        served.append(current)
    return served


def held_back(steps: list[dict[str, Any]]) -> int:
    """How many steps' models the gate did not promote."""
    return sum(1 for step in steps if step.get("promotion") and not step["promotion"]["promoted"])


def run_results(folder: Path, row: str, seed: int) -> dict[str, Any]:
    """One run's results: in a comparison (``runs/<row>/seed<k>``) or in its records (``<row>/seed<k>``)."""
    for path in (folder / "runs" / row / f"seed{seed}", folder / row / f"seed{seed}"):
        if (path / "results.json").is_file():
            return json.loads((path / "results.json").read_text())
    raise SystemExit(f"{folder} holds no results.json for row {row}, seed {seed}.")


def served_table(folder: Path) -> str:
    """The markdown table: one line per step, one column per row, plus the held-back counts."""
    plan = read_plan(folder)
    if plan is None:
        raise SystemExit(f"{folder} holds no comparison (compare.yaml is missing).")
    rows, seeds = [row["name"] for row in plan["rows"]], plan["seeds"]
    runs = {row: [run_results(folder, row, seed)["steps"] for seed in seeds] for row in rows}
    served = {row: [served_top1(steps) for steps in runs[row]] for row in rows}
    lines = ["| step | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
    for k in range(min(len(s) for per_seed in served.values() for s in per_seed)):
        cells = [mean_std([s[k] for s in served[row]]) for row in rows]
        lines.append(f"| {k + 1} | " + " | ".join(f"{m:.2f} ± {sd:.2f}" for m, sd in cells) + " |")
    lines.append("| held back | " + " | ".join(str(sum(held_back(steps) for steps in runs[row])) for row in rows) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="A toolbox compare --out folder, or its records.")
    print(served_table(parser.parse_args().folder))


if __name__ == "__main__":
    main()
