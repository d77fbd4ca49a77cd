"""What an update changed: flips between two models' predictions on the same images, and the
per-class top-1 change.

A *negative flip* is an image the earlier model classified correctly and the new one does not; the
negative flip rate (NFR, Yan et al., "Positive-congruent training", CVPR 2021) is their share of
all the images, the positive flip rate (PFR) the share of images only the new model gets right.
Both are fractions in [0, 1]; top-1 values are percentages, as everywhere in the toolbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from toolbox.runtime.device import autocast_context


@torch.inference_mode()
def predicted_labels(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions, labels)`` of ``model`` over ``batches``, in order, on the CPU."""
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for inputs, targets in batches:
        with autocast_context(device, precision):
            predictions.append(model(inputs).float().argmax(dim=1).cpu())
        labels.append(targets.cpu())
    model.train(was_training)
    if not labels:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(predictions), torch.cat(labels)


def flip_rates(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``nfr`` and ``pfr`` (fractions of all images) from the earlier model's predictions ``before``
    to the new model's ``after``; 0 for no images."""
    if labels.numel() == 0:
        return {"nfr": 0.0, "pfr": 0.0}
    right_before, right_after = before == labels, after == labels
    return {"nfr": float((right_before & ~right_after).double().mean()),
            "pfr": float((~right_before & right_after).double().mean())}


def per_class_top1(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Top-1 (percent) of each class; ``None`` for a class with no images."""
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).double()
    count = torch.bincount(labels, minlength=num_classes).double()
    return [None if n == 0 else round(100.0 * float(c / n), 4) for c, n in zip(correct.tolist(), count.tolist())]


def update_record(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, classes: list[str],
                  against_step: int) -> dict[str, Any]:
    """What the update changed on these images, as a step records it: the flip rates against step
    ``against_step``'s model and, per class, the new top-1 and its change (points)."""
    old = per_class_top1(before, labels, len(classes))
    new = per_class_top1(after, labels, len(classes))
    per_class = {name: {"top1": n, "change": None if n is None or o is None else round(n - o, 4)}
                 for name, o, n in zip(classes, old, new)}
    return {"against_step": against_step, **flip_rates(before, after, labels), "per_class": per_class}
