"""What is served is what is reported: each step's row names the phase whose model
``serve/step{k}.pt`` holds, with its top-1, beside the end-of-step top-1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from toolbox.run import lock as runlock
from toolbox.run.start import start_run


def test_each_step_reports_its_served_model(tiny_values: dict[str, Any]) -> None:
    start_run({**tiny_values, "steps": 2, "plugins": "sst,aod,msl"}).execute()
    runlock.release_all()
    out = Path(tiny_values["out"])
    results = json.loads((out / "results.json").read_text())
    first = results["steps"][0]
    learn = next(p for p in first["phases"] if p["phase"] == "learn")
    assert first["served"] == {"phase": "learn", "top1": learn["top1"], "top5": learn["top5"]}
    assert [p["phase"] for p in first["phases"]] == ["learn", "sparsify"]  # the row's top-1 is sparsify's
    assert torch.load(out / "serve" / "step1.pt", weights_only=True)["phase"] == "learn"
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| 1 |"))
    assert f"| {learn['top1']:.2f} (learn) |" in row
