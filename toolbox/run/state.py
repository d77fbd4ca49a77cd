"""What a run carries from phase to phase, and the per-step records of its results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RunState:
    """What a run carries from phase to phase (and what a checkpoint restores)."""

    results: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    done: set[tuple[int, str]] = field(default_factory=set)

    def record_phase(self, step: int, record: dict[str, Any], served: bool = False) -> None:
        """Add a phase record; the step's summary is its last phase's accuracy and cost, and
        ``served`` (phase, top-1, top-5) names the phase whose model ``serve/step{k}.pt`` holds."""
        results = self.results
        if not results or results[-1]["step"] != step:
            results.append({"step": step, "phases": []})
        entry = results[-1]
        entry["phases"].append(record)
        sparsity = [p["sparsity"] for p in entry["phases"] if "sparsity" in p]
        entry.pop("top5", None)
        entry.update(top1=record["top1"], **({"top5": record["top5"]} if "top5" in record else {}),
                     train_seconds=sum(p["train_seconds"] for p in entry["phases"]),
                     params=record["params"], macs=record["macs"],
                     sparsity=sparsity[-1] if sparsity else None)
        if served:
            entry["served"] = {"phase": record["phase"], "top1": record["top1"],
                              **({"top5": record["top5"]} if "top5" in record else {})}
