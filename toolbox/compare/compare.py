"""``toolbox compare``: which method for my data? Every row x seed as an ordinary run under DIR.

``DIR/compare.yaml`` records the plan (the base options, the rows with what each changes, the
seeds, the tuned values); ``DIR/runs/<row>/seed<k>/`` holds each run; ``DIR/tune/`` the studies of
``--trials``; ``compare.md/.json/.csv`` and ``top1_vs_step.png`` the report, rewritten after every
finished run. Paired seeds: every row of a seed trains on the same shards (the split depends only
on the seed), starts from the same initial weights (drawn from the seed) and sees the same batch
order (every phase's seed depends only on seed, step and phase), as the accuracy benchmark's rows
do; rows with the same step-1 settings therefore share the step-1 model. Rerunning the command,
or ``toolbox compare --resume DIR``, continues: finished runs are read, interrupted ones resumed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import yaml

from toolbox.compare import execute, tables
from toolbox.compare.plan import Row, choose_rows, parse_methods, parse_seeds, plan_rows
from toolbox.errors import UsageError
from toolbox.options import read_mapping
from toolbox.storage.atomic import atomic_write_text

PLAN_FILE = "compare.yaml"
log = logging.getLogger("toolbox")


def new_plan(base: dict[str, Any], methods: list[str], seeds: str, *, equal_compute: bool = True,
             rows: str | None = None, method_values: dict[str, dict[str, Any]] | None = None,
             trials: int = 0) -> dict[str, Any]:
    """The plan of a comparison (what compare.yaml holds); one sentence for a bad value."""
    base = {k: v for k, v in base.items() if k not in ("out", "plugins", "seed", "seeds") and v is not None}
    planned = choose_rows(plan_rows(base, parse_methods(methods), equal_compute, method_values), rows)
    return {"base": base, "seeds": parse_seeds(seeds), "trials": int(trials),
            "rows": [{**asdict(r), "plugins": list(r.plugins)} for r in planned]}


def read_plan(out: Path) -> dict[str, Any] | None:
    """The plan recorded in ``out`` (None when there is none)."""
    path = Path(out) / PLAN_FILE
    return read_mapping(path) if path.is_file() else None


def open_dir(out: Path, plan: dict[str, Any] | None) -> dict[str, Any]:
    """The plan to carry out in ``out``: the recorded one (``plan`` None: ``--resume``), or
    ``plan``, written when ``out`` is new and refused when ``out`` holds another comparison."""
    out = Path(out)
    recorded = read_plan(out)
    if plan is None:
        if recorded is None:
            raise UsageError(f"{out} holds no comparison ({PLAN_FILE} is missing); pass the directory "
                             "`toolbox compare --out` wrote.")
        return recorded
    if recorded is not None:
        if _comparable(recorded) != _comparable(plan):
            raise UsageError(f"{out} holds a comparison of other methods, seeds or options; continue it with "
                             f"`toolbox compare --resume {out}` or pass another --out.")
        return recorded
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no comparison; pass a new or empty --out.")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PLAN_FILE, yaml.safe_dump(plan, sort_keys=False))
    return plan


def _comparable(plan: dict[str, Any]) -> Any:
    """What must match for a rerun to continue a comparison (tuned values are filled in later)."""
    return (plan["base"], plan["seeds"], plan.get("trials", 0), [(r["name"], r["plugins"], r["changes"]) for r in plan["rows"]])


def tune_rows(out: Path, plan: dict[str, Any], space: Path | None) -> dict[str, Any]:
    """``--trials``: tune every row not yet tuned (same budget each); the chosen values join its
    changes and the plan is written again."""
    from toolbox.compare import tuning as equal_tuning  # Optuna only when tuning

    user = equal_tuning.read_user_space(space)
    for row in plan["rows"]:
        if row.get("tuned") is not None:
            continue
        values = Row(row["name"], tuple(row["plugins"]), row["changes"]).values(
            {**plan["base"], "seed": plan["seeds"][0]})
        row["tuned"] = equal_tuning.tune_row(out, Row(row["name"], tuple(row["plugins"])), values,
                                             plan["trials"], user)
        atomic_write_text(Path(out) / PLAN_FILE, yaml.safe_dump(plan, sort_keys=False))
    return plan


def jobs(out: Path, plan: dict[str, Any]) -> list[tuple[dict[str, Any], Path]]:
    """Every run of the plan, seed after seed (so the first seed's rows finish first)."""
    found = []
    for seed in plan["seeds"]:
        for row in plan["rows"]:
            values = {**plan["base"], "plugins": row["plugins"], **row["changes"], **(row.get("tuned") or {}),
                      "seed": seed}
            found.append((values, execute.run_dir(out, row["name"], seed)))
    return found


def run_compare(out: Path, plan: dict[str, Any] | None, *, space: Path | None = None, workers: int = 1,
                announce: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Carry out ``plan`` in ``out`` (``None``: continue the recorded one); return the summary rows."""
    out = Path(out)
    plan = open_dir(out, plan)
    if plan.get("trials"):
        plan = tune_rows(out, plan, space)

    def done(folder: Path) -> None:
        tables.write_report(out, plan, plot=False)  # the plot once, at the end
        if announce is not None:
            announce(f"finished {folder.relative_to(out)}")

    try:
        execute.run_all(jobs(out, plan), workers, done)
    except Exception:
        tables.write_report(out, plan)  # the runs that finished, plot included, before the error
        raise
    return tables.write_report(out, plan)


def report(out: Path) -> list[dict[str, Any]]:
    """``toolbox report DIR`` on a comparison: render its report again from the run directories."""
    plan = read_plan(out)
    if plan is None:
        raise UsageError(f"{out} holds no comparison ({PLAN_FILE} is missing).")
    rows = tables.write_report(Path(out), plan)
    if not rows:
        raise UsageError(f"No run of the comparison in {out} has finished yet; continue it with "
                         f"`toolbox compare --resume {out}`.")
    return rows
