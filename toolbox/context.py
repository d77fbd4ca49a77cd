"""The one object every hook receives: where the run is and what it is training."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from toolbox.options import RunOptions
from toolbox.runtime.device import autocast_context


@dataclass
class Context:
    """State of the run as plugins see it.

    Plugins read it and may set ``masks``, ``records`` and ``phase_metrics``; they keep their
    own state on themselves. ``teacher`` is a frozen copy (eval mode, no grad) of the model as
    the previous phase left it; ``None`` in the first phase of a run. ``start_epoch`` is the
    first epoch this process trains: 0, or the epochs already done when the phase continues from
    ``partial.pt`` after a kill (then ``toolbox_model_surgery`` is skipped and
    ``toolbox_load_state_dict`` restores the plugins' state). :meth:`teacher_logits` computes
    the teacher's logits with its compact copy where the teacher's masked filters are exactly 0
    (``--compact-teacher``, :mod:`toolbox.pruning.compact_teacher`; running statistics only).
    ``step_phases`` are the phases this step runs, in order (``ctx.phase == ctx.step_phases[-1]``
    in the step's last phase). :meth:`create_model` and :meth:`train_batches` work inside a run
    (the run sets their sources).
    """

    options: RunOptions
    model: nn.Module
    device: torch.device
    run_dir: Path | None = None
    step: int = 1
    num_steps: int = 1
    phase: str = "learn"
    epoch: int = 0
    epochs: int = 1
    batch_index: int = 0
    batches_per_epoch: int = 0
    global_batch: int = 0
    start_epoch: int = 0
    num_classes: int = 0
    input_size: tuple[int, int, int] | None = None
    teacher: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    phase_metrics: dict[str, float] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("toolbox"))
    step_phases: tuple[str, ...] = ()
    model_factory: Callable[[], nn.Module] | None = field(default=None, repr=False)
    batch_source: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = field(default=None, repr=False)
    _batch_cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _distilled: tuple[nn.Module, nn.Module] | None = field(default=None, repr=False)

    def create_model(self) -> nn.Module:
        """A freshly initialized model of the run's architecture (``--arch``, classes, input
        channels, ``model_kwargs``) on the run's device and memory format, drawn from the torch
        RNG (seeded per phase by the run, so reproducible). Never the pruned structure."""
        if self.model_factory is None:
            raise RuntimeError("ctx.create_model() needs a run (or set ctx.model_factory in a test).")
        return self.model_factory()

    def train_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The phase's training images as ``(inputs, targets)`` batches on the device: every image
        of the phase once (all of them on every process), in stored order, unaugmented and
        normalized as for evaluation, ``--batch-size`` per batch. Draws no random numbers."""
        if self.batch_source is None:
            raise RuntimeError("ctx.train_batches() needs a run (or set ctx.batch_source in a test).")
        return self.batch_source()

    def teacher_logits(self, inputs: torch.Tensor, bn: str = "running") -> torch.Tensor | None:
        """Logits of the frozen teacher on this batch, computed once per batch (and ``bn`` mode,
        see :meth:`infer`) for all plugins."""
        if self.teacher is None:
            return None
        key = f"teacher_logits_{bn}"
        cached = self._batch_cache.get(key)
        if cached is None or cached[0] is not inputs:
            module = self.distillation_teacher() if bn == "running" else self.teacher
            cached = (inputs, self.infer(module, inputs, bn=bn))
            self._batch_cache[key] = cached
        return cached[1]

    def distillation_teacher(self) -> nn.Module | None:
        """The module that computes :meth:`teacher_logits`: the compact copy of ``teacher`` (with
        ``masks``) where it computes the same logits and ``--compact-teacher`` is on, else
        ``teacher``. Built on first use, once per teacher."""
        if self.teacher is None:
            return None
        if self._distilled is None or self._distilled[0] is not self.teacher:
            from toolbox.pruning.compact_teacher import distillation_teacher  # only distilling runs need it

            module = distillation_teacher(self.teacher, self.masks, self.input_size,
                                          enabled=self.options.compact_teacher, logger=self.logger)
            self._distilled = (self.teacher, module)
        return self._distilled[1]

    def infer(self, module: nn.Module, inputs: torch.Tensor, bn: str = "running") -> torch.Tensor:
        """``module(inputs)`` as an inference pass: no autograd graph, the student's autocast
        precision (``--precision``), float32 logits out. For teachers and other frozen models.

        ``bn="running"`` leaves the module's BatchNorm layers as they are (eval mode: running
        statistics); ``bn="batch"`` normalizes with this batch's statistics without changing
        the stored ones (:func:`toolbox.methods.bn_statistics.batch_statistics`).
        """
        from toolbox.methods.bn_statistics import batch_statistics

        if bn not in ("running", "batch"):
            raise ValueError(f"bn must be 'running' or 'batch', got {bn!r}")
        normalization = batch_statistics(module) if bn == "batch" else contextlib.nullcontext()
        with torch.no_grad(), autocast_context(self.device, self.options.precision), normalization:
            return module(inputs).float()

    def new_batch(self) -> None:
        """Forget per-batch caches (called by the engine before every batch)."""
        self._batch_cache.clear()
