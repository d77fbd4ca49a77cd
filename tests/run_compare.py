"""Helpers that compare two run directories without their wall-clock fields."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

WALL_CLOCK = ("train_seconds", "seconds", "images_per_second")


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """Results without wall-clock fields and the run directory (they differ between any two runs)."""
    results = copy.deepcopy(results)
    results["config"].pop("out")
    for step in results["steps"]:
        step.pop("train_seconds")
        for phase in step["phases"]:
            phase.pop("train_seconds")
    return results


def metric_lines(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without wall-clock fields (every line must parse)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in WALL_CLOCK} for line in lines]
