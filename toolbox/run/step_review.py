"""After every step: what the update changed, and whether its model is promoted.

:func:`review_step` runs once a step's phases are done, on the step's serve file
(``serve/step{k}.pt``, the model that would be served):

- **what changed** (reported, on the test images): negative and positive flip rates against the
  previous step's serve file and the per-class top-1 change (:mod:`toolbox.run.flips`);
- **the promotion gate** (decided on the validation images only): the new model against the
  promoted one, by the run's ``--promote`` rule (:mod:`toolbox.run.promotion`).

The next step trains from the newest model whether or not it was promoted: a model the gate held
back is still what the run's method continues from (its masks and records are that model's), so
the gate decides only what is served.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from toolbox.run import promotion
from toolbox.run.flips import flip_rates, predicted_labels, update_record
from toolbox.run.serve_files import serve_path
from toolbox.storage import checkpoint as ckpt

if TYPE_CHECKING:
    from toolbox.run.run import Run

log = logging.getLogger("toolbox")


def load_served(path: Path, device: torch.device) -> nn.Module:
    """The model of a serve file, on ``device``, in eval mode (the run's RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        return ckpt.model_from_checkpoint(ckpt.load_checkpoint(path)).to(device).eval()


def review_step(run: "Run", step: int) -> dict[str, Any]:
    """``{"update": ..., "promotion": ...}`` of ``step`` for its results entry; writes the promotion
    decision to ``serve/history.json`` (and ``serve/current.pt`` when promoted)."""
    run_dir, inputs, device, precision = run.run_dir, run.inputs, run.device, run.options.precision
    new_file = serve_path(run_dir, step)
    new_model = load_served(new_file, device)
    entry: dict[str, Any] = {}
    previous_file = serve_path(run_dir, step - 1)
    if step > 1 and previous_file.exists():
        after, labels = predicted_labels(new_model, inputs.whole_test_loader(), device, precision)
        before, _ = predicted_labels(load_served(previous_file, device), inputs.whole_test_loader(), device, precision)
        entry["update"] = update_record(before, after, labels, class_names(run.data), step - 1)
    history = promotion.read_history(run_dir)
    against = promotion.promoted_before(history, step)
    numbers = None
    if inputs.has_validation and against is not None:
        numbers = gate_numbers(new_model, load_served(serve_path(run_dir, against), device), inputs, device, precision)
    promote, reason = promotion.judge(run.options.promote, numbers, first=against is None)
    decision = {"step": step, "promoted": promote, "reason": reason, "rule": run.options.promote,
                "against_step": against, "numbers": numbers, "by": "gate"}
    history = promotion.record_decision(run_dir, decision, new_file)
    entry["promotion"] = {key: decision[key] for key in ("promoted", "reason", "against_step", "numbers")}
    say_decision(step, decision, history)
    return entry


def class_names(data: Any) -> list[str]:
    """The dataset's class names (their indices for a dataset without names)."""
    return list(data.classes) if data.classes else [str(i) for i in range(data.num_classes)]


def gate_numbers(new: nn.Module, promoted: nn.Module, inputs: Any, device: torch.device,
                 precision: str) -> dict[str, float]:
    """The gate's numbers on the validation images: ``top1`` (new), ``prev`` (promoted), ``nfr``, ``pfr``."""
    after, labels = predicted_labels(new, inputs.validation_loader(whole=True), device, precision)
    before, _ = predicted_labels(promoted, inputs.validation_loader(whole=True), device, precision)
    count = max(labels.numel(), 1)
    return {"top1": round(100.0 * float((after == labels).sum()) / count, 4),
            "prev": round(100.0 * float((before == labels).sum()) / count, 4),
            **{k: round(v, 6) for k, v in flip_rates(before, after, labels).items()}}


def say_decision(step: int, decision: dict[str, Any], history: dict[str, Any]) -> None:
    """One console line for the decision (held back: a warning that says what is served instead)."""
    numbers = decision["numbers"]
    detail = "" if numbers is None else (f" (validation top-1 {numbers['top1']:.2f} % vs {numbers['prev']:.2f} % of "
                                         f"step {decision['against_step']}, negative flips {numbers['nfr']:.1%})")
    if decision["promoted"]:
        log.info("Step %d promoted to serve/current.pt%s: %s.", step, detail, decision["reason"])
    else:
        log.warning("Step %d NOT promoted%s: it %s; serve/current.pt stays step %s, and the next step still "
                    "trains from step %d's model (`toolbox promote RUN --step %d` serves it anyway).",
                    step, detail, decision["reason"], history["current"]["step"], step, step)
