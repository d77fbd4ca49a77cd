"""The one object every hook receives: where the run is and what it is training."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolbox.device import autocast_context
from toolbox.options import RunOptions


@dataclass
class Context:
    """State of the run as plugins see it.

    Plugins read it and may set ``masks``, ``records`` and ``phase_metrics``; they keep their
    own state on themselves. ``teacher`` is a frozen copy (eval mode, no grad) of the model as
    the previous phase left it; ``None`` in the first phase of a run. ``start_epoch`` is the
    first epoch this process trains: 0, or the epochs already done when the phase continues from
    ``partial.pt`` after a kill (then ``toolbox_model_surgery`` is skipped and
    ``toolbox_load_state_dict`` restores the plugins' state).
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
    _batch_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Logits of the frozen teacher on this batch, computed once per batch for all plugins."""
        if self.teacher is None:
            return None
        key = "teacher_logits"
        cached = self._batch_cache.get(key)
        if cached is None or cached[0] is not inputs:
            cached = (inputs, self.infer(self.teacher, inputs))
            self._batch_cache[key] = cached
        return cached[1]

    def infer(self, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """``module(inputs)`` as an inference pass: no autograd graph, the student's autocast
        precision (``--precision``), float32 logits out. For teachers and other frozen models."""
        with torch.no_grad(), autocast_context(self.device, self.options.precision):
            return module(inputs).float()

    def new_batch(self) -> None:
        """Forget per-batch caches (called by the engine before every batch)."""
        self._batch_cache.clear()
