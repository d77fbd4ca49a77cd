"""Knowledge distillation: the softened-logit KL loss and the options distillation plugins share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toolbox.options import PluginOption


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` per sample, averaged over the batch.

    The teacher side is detached. ``weights`` (shape ``(batch,)`` or a scalar) multiplies each
    sample's KL before the mean over the batch (the mean divides by the batch size, not by the
    sum of the weights, so smaller weights mean a weaker pull).
    """
    if T <= 0:
        raise ValueError(f"temperature must be positive, got {T}")
    log_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_t = F.log_softmax(teacher_logits.detach().float() / T, dim=1)
    per_sample = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.detach().to(per_sample)
    return per_sample.mean() * (T * T)


def temperature_option() -> PluginOption:
    """The shared ``--T`` option (distillation temperature, default 4.0, must be > 0)."""
    return PluginOption("T", float, 4.0, "distillation temperature (softens both logits; KL scaled by T^2)",
                        check=lambda v: None if v > 0 else "the temperature must be > 0, e.g. 4.")


def alpha_option() -> PluginOption:
    """The shared ``--alpha`` option (base weight of the distillation term, default 1.0, >= 0)."""
    return PluginOption("alpha", float, 1.0, "base weight of the distillation term added to cross-entropy",
                        check=lambda v: None if v >= 0 else "the weight must be >= 0.")


def adaptive_weight(teacher_logits: torch.Tensor, targets: torch.Tensor, rule: str) -> torch.Tensor:
    """Distillation weight per sample: teacher's p(true label) (``confidence``), its batch
    accuracy (``accuracy``), or 1 (``constant``)."""
    teacher_logits = teacher_logits.detach().float()
    if rule == "confidence":
        return F.softmax(teacher_logits, dim=1).gather(1, targets.view(-1, 1)).squeeze(1)
    if rule == "accuracy":
        acc = (teacher_logits.argmax(dim=1) == targets).float().mean()
        return acc.expand(targets.shape[0])
    return torch.ones(targets.shape[0], device=teacher_logits.device)


TEACHER_BN = ("running", "batch")


def teacher_bn_option() -> PluginOption:
    """The shared ``--teacher-bn`` option: the teacher's BatchNorm normalizes with its running
    statistics (eval mode, the default) or with each batch's statistics (as Avalanche's LwF)."""
    return PluginOption("teacher_bn", str, "running", "the teacher's BatchNorm normalization: its running "
                        "statistics (eval mode) or the batch's statistics (stored statistics untouched)",
                        choices=TEACHER_BN)
