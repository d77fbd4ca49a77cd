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

from toolbox.data.class_names import data_class_names
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
    run_dir, options = run.run_dir, run.options
    new_file = serve_path(run_dir, step)
    predictions = Predictions(run)
    entry: dict[str, Any] = {}
    if step > 1 and serve_path(run_dir, step - 1).exists():
        labels = run.inputs.data.test_y.cpu()
        before, after = predictions.of(step - 1, "test"), predictions.of(step, "test")
        entry["update"] = update_record(before, after, labels, data_class_names(run.data), step - 1)
    history = promotion.read_history(run_dir)
    against = promotion.promoted_before(history, step)
    numbers = None
    if run.inputs.has_validation and against is not None:
        numbers = gate_numbers(predictions.of(against, "val"), predictions.of(step, "val"), predictions.val_labels())
    promote, reason = promotion.judge(options.promote, numbers, first=against is None)
    decision = {"step": step, "promoted": promote, "reason": reason, "rule": options.promote,
                "against_step": against, "numbers": numbers, "by": "gate"}
    history = promotion.record_decision(run_dir, decision, new_file)
    entry["promotion"] = {key: decision[key] for key in ("promoted", "reason", "against_step", "numbers")}
    say_decision(step, decision, history)
    predictions.keep(step, against if not promote else step)
    return entry


class Predictions:
    """The served models' predictions on the test and validation images, each computed once: a
    run keeps those of the last step and of the promoted one for the next review (a resumed run
    computes them again from the serve files)."""

    def __init__(self, run: "Run") -> None:
        self.run = run
        self.cache: dict[tuple[int, str], torch.Tensor] = getattr(run, "served_predictions", {})
        run.served_predictions = self.cache

    def of(self, step: int, images: str) -> torch.Tensor:
        """Predictions of ``serve/step{step}.pt`` on the ``"test"`` or ``"val"`` images."""
        if (step, images) not in self.cache:
            run = self.run
            model = load_served(serve_path(run.run_dir, step), run.device)
            for which in ("test", "val") if run.inputs.has_validation else ("test",):
                loader = run.inputs.whole_test_loader() if which == "test" else run.inputs.validation_loader(whole=True)
                self.cache[(step, which)] = predicted_labels(model, loader, run.device, run.options.precision)[0]
        return self.cache[(step, images)]

    def val_labels(self) -> torch.Tensor:
        """The validation images' labels, in the loader's order."""
        inputs = self.run.inputs
        if inputs.val_images is not None:
            return inputs.val_images.y.cpu()
        return inputs.data.train_y[inputs.validation].cpu()

    def keep(self, *steps: int | None) -> None:
        """Forget the predictions of every step but ``steps``."""
        for key in [key for key in self.cache if key[0] not in steps]:
            del self.cache[key]


def gate_numbers(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The gate's numbers on the validation images from the promoted model's predictions ``before``
    and the new model's ``after``: ``top1`` (new), ``prev`` (promoted), ``nfr``, ``pfr``."""
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
