"""The training loop: epochs of SGD with hook calls, evaluation and metrics.

Nothing method-specific lives here: plugins change behaviour through the hooks. Hooks that no
plugin implements are skipped, so a run without plugins is a plain, fast supervised loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pluggy
import torch
import torch.nn.functional as F
from torch import nn

from toolbox.context import Context
from toolbox.options import RunOptions
from toolbox.plugin_host import calls
from toolbox.runtime import distributed
from toolbox.runtime.device import autocast_context


class NumericError(RuntimeError):
    """A non-finite loss during training; the message names step, phase, epoch and batch."""


def build_optimizer(model: nn.Module, options: RunOptions) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                           weight_decay=options.weight_decay)


def lr_at(progress: float, options: RunOptions, total_epochs: int) -> float:
    """Learning rate at ``progress`` epochs into a phase of ``total_epochs`` epochs.

    Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then ``cosine`` (to 0),
    ``multistep`` (times ``lr_decay`` at each fraction in ``milestones``) or ``constant``.
    """
    warm = min(options.warmup_epochs, total_epochs)
    if progress < warm:
        return options.warmup_lr + (options.lr - options.warmup_lr) * progress / warm
    if options.schedule == "constant":
        return options.lr
    span = max(total_epochs - warm, 1e-12)
    fraction = min(max((progress - warm) / span, 0.0), 1.0)
    if options.schedule == "cosine":
        return 0.5 * options.lr * (1.0 + math.cos(math.pi * fraction))
    passed = sum(1 for m in options.milestones if fraction >= m)
    return options.lr * options.lr_decay ** passed


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (as tensors)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(targets[:, None])
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


#: Top-5 is reported only for more classes than this (with five or fewer it is 100 % by definition).
TOP5_MIN_CLASSES = 5


def has_top5(classes: int) -> bool:
    """Whether top-5 says anything for ``classes`` classes (more than five)."""
    return classes > TOP5_MIN_CLASSES


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, precision: str = "fp32", across_processes: bool = False) -> dict[str, float | None]:
    """Loss, top-1 and top-5 (percent) of ``model`` over ``batches``; top-5 is ``None`` for a model
    of at most :data:`TOP5_MIN_CLASSES` classes, where it is always 100 % (:func:`has_top5`).

    ``across_processes``: in a multi-process run ``batches`` are this process's part of the set
    and the sums are added over all processes, so every process gets the scores of the whole set.
    """
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=device, dtype=torch.float64)
    correct1 = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    count, classes = 0, 0
    for inputs, targets in batches:
        with autocast_context(device, precision):
            logits = model(inputs)
        logits = logits.float()
        classes = logits.shape[1]
        loss += F.cross_entropy(logits, targets, reduction="sum")
        c1, c5 = topk_correct(logits, targets)
        correct1 += c1
        correct5 += c5
        count += targets.numel()
    model.train(was_training)
    if across_processes and distributed.active():
        sums = distributed.reduce_sums({"loss": loss, "correct1": correct1, "correct5": correct5, "count": count})
        loss, correct1, correct5 = (torch.tensor(sums[k]) for k in ("loss", "correct1", "correct5"))
        count = int(sums["count"])
    count = max(count, 1)
    return {"loss": loss.item() / count, "top1": 100.0 * correct1.item() / count,
            "top5": 100.0 * correct5.item() / count if has_top5(classes) else None}


@dataclass
class EpochStats:
    """Running sums for one epoch, kept as tensors to avoid a device sync per batch."""

    device: torch.device
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | None = None
    images: int = 0
    batches: int = 0

    def add(self, terms: dict[str, torch.Tensor], correct: torch.Tensor, images: int) -> None:
        """Accumulate one batch."""
        for name, value in terms.items():
            value = value.detach().float()
            self.terms[name] = self.terms[name] + value if name in self.terms else value
        self.correct = correct if self.correct is None else self.correct + correct
        self.images += images
        self.batches += 1

    def summary(self) -> dict[str, float]:
        """Mean of each loss term per batch and train top-1 (percent).

        In a multi-process run the sums of all processes are added first (one all-reduce): every
        process's batch is an equal share of the global batch, so the mean over all processes'
        batches is the mean over global batches, and ``images`` counts the global images.
        """
        if distributed.active():
            sums = distributed.reduce_sums({**{f"term:{k}": v for k, v in self.terms.items()},
                                            "correct": 0 if self.correct is None else self.correct,
                                            "images": self.images, "batches": self.batches})
            self.images, self.batches = int(sums["images"]), int(sums["batches"])
            self.correct = torch.tensor(sums["correct"], dtype=torch.float64)
            self.terms = {k: torch.tensor(sums[f"term:{k}"], dtype=torch.float64) for k in self.terms}
        out = {name: value.item() / max(self.batches, 1) for name, value in self.terms.items()}
        out["train_top1"] = 100.0 * (self.correct.item() if self.correct is not None else 0) / max(self.images, 1)
        return out


class Trainer:
    """Trains one phase: the engine's loop with hook calls.

    ``batches_for_epoch(epoch)`` returns the epoch's iterable of ``(inputs, targets)`` already on
    the device. ``on_batch`` (progress) and ``on_epoch_end(epoch, metrics)`` are optional callbacks.

    ``forward`` is the module the training forward/backward runs through: ``ctx.model`` (the
    default) or, in a multi-process run, its DistributedDataParallel wrapper, whose backward
    leaves the gradients averaged over all processes. Hooks always receive ``ctx.model``, so
    ``toolbox_regularize`` (after backward) and ``toolbox_batch_end`` (after the step) act once,
    on the synchronized gradients and parameters, identically on every process.
    """

    def __init__(self, pm: pluggy.PluginManager, ctx: Context, forward: nn.Module | None = None) -> None:
        self.pm = pm
        self.ctx = ctx
        self.forward = forward if forward is not None else ctx.model
        self.has_loss = calls.implements(pm, "toolbox_loss")
        self.has_regularize = calls.implements(pm, "toolbox_regularize")
        self.has_batch_end = calls.implements(pm, "toolbox_batch_end")
        self.has_epoch_start = calls.implements(pm, "toolbox_epoch_start")
        self.has_epoch_end = calls.implements(pm, "toolbox_epoch_end")
        self.skipped = 0

    def train(self, optimizer: torch.optim.Optimizer,
              batches_for_epoch: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
              batches_per_epoch: int, start_epoch: int = 0,
              on_batch: Callable[[], None] | None = None,
              on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> None:
        """Run epochs ``start_epoch .. ctx.epochs - 1`` of the phase."""
        ctx, options = self.ctx, self.ctx.options
        model = ctx.model
        device = ctx.device
        scaler = torch.amp.GradScaler("cuda") if options.precision == "fp16" and device.type == "cuda" else None
        self.forward.train()
        for epoch in range(start_epoch, ctx.epochs):
            ctx.epoch = epoch
            if self.has_epoch_start:
                calls.epoch_start(self.pm, ctx)
            stats = EpochStats(device)
            started = time.perf_counter()
            for index, (inputs, targets) in enumerate(batches_for_epoch(epoch)):
                ctx.batch_index = index
                lr = lr_at(epoch + index / batches_per_epoch, options, ctx.epochs)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                outcome = self._step(model, optimizer, scaler, inputs, targets)
                if outcome is not None:
                    stats.add(*outcome, targets.numel())
                ctx.global_batch += 1
                if on_batch is not None:
                    on_batch()
            metrics = stats.summary()
            if self.skipped:
                metrics["skipped_batches"] = float(self.skipped)
                self.skipped = 0
            seconds = time.perf_counter() - started
            metrics.update(lr=optimizer.param_groups[0]["lr"], seconds=seconds,
                           images_per_second=stats.images / max(seconds, 1e-9))
            if self.has_epoch_end:
                calls.epoch_end(self.pm, ctx, metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)

    def _step(self, model: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None, inputs: torch.Tensor,
              targets: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """One optimizer step; returns the loss terms and the number of correct predictions.

        A non-finite loss or gradient stops the phase (:class:`NumericError`), or with
        ``skip_nonfinite`` skips the batch with a warning (returns ``None``).
        """
        ctx = self.ctx
        if self.has_loss:
            ctx.new_batch()
        with autocast_context(ctx.device, ctx.options.precision):
            logits = self.forward(inputs)
        logits = logits.float()
        ce = F.cross_entropy(logits, targets)
        terms = {"ce": ce}
        loss = ce
        if self.has_loss:
            for name, value in calls.loss_terms(self.pm, ctx, (inputs, targets), logits):
                terms[name] = value
                loss = loss + value
        optimizer.zero_grad(set_to_none=True)
        if not self._finite(loss, "loss", terms):
            return None
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.has_regularize:
            calls.regularize(self.pm, ctx, model)
        if scaler is None and not self._finite(gradient_norm(optimizer), "gradient norm", terms):
            optimizer.zero_grad(set_to_none=True)
            return None
        if scaler is not None:
            scaler.step(optimizer)  # skips steps with inf/NaN gradients by design of loss scaling
            scaler.update()
        else:
            optimizer.step()
        if self.has_batch_end:
            calls.batch_end(self.pm, ctx, model)
        terms["loss"] = loss
        correct = (logits.detach().argmax(dim=1) == targets).sum()
        return terms, correct

    def _finite(self, value: torch.Tensor, what: str, terms: dict[str, torch.Tensor]) -> bool:
        """True when ``value`` is finite (on every process); else raise, or warn when skipping bad
        batches (every process then skips the batch together)."""
        finite = torch.isfinite(value)
        if distributed.all_true(finite):
            return True
        ctx = self.ctx
        bad = [name for name, term in terms.items() if not bool(torch.isfinite(term.detach()))]
        where = (f"step {ctx.step}, phase {ctx.phase}, epoch {ctx.epoch + 1}, batch {ctx.batch_index + 1}")
        detail = f" (non-finite terms: {', '.join(bad)})" if bad else ""
        if ctx.options.skip_nonfinite:
            ctx.logger.warning("Skipping a batch with a non-finite %s at %s%s.", what, where, detail)
            self.skipped += 1
            return False
        raise NumericError(
            f"Non-finite {what} at {where}{detail}; lower --lr, check the plugins' loss terms or pass "
            "--skip-nonfinite (the last good checkpoint is kept)."
        )


def check_finite(model: nn.Module, scores: dict[str, float], where: str, hint: str) -> None:
    """Raise :class:`NumericError` (one sentence: ``where``, what is not finite, ``hint``) when a
    parameter or floating buffer of ``model``, or a ``*loss`` of ``scores``, is NaN or inf: a
    diverged model is never saved as a finished phase, served or continued from."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    bad += [f"the {name.replace('_', ' ')}" for name, v in scores.items() if name.endswith("loss") and not math.isfinite(v)]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        verb = "is" if len(bad) == 1 else "are"
        raise NumericError(f"The model diverged at {where}: {shown} {verb} not finite, so that phase is not saved; "
                           f"{hint}")


def near_chance(train_top1: float, num_classes: int) -> bool:
    """Whether a training top-1 (percent) is within a tenth of the way from chance to 100 %: the
    model has not learned (too few epochs, a learning rate far off, or labels that carry nothing)."""
    chance = 100.0 / max(num_classes, 1)
    return train_top1 < chance + 0.1 * (100.0 - chance)


def gradient_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The global L2 norm of all gradients (one fused reduction per device)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


