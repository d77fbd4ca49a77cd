"""The target-mode controller of sparsity training: reach the ratio by a set point of the phase.

The selected units take a proximal step after every optimizer step with the threshold
``tau = m / R``: ``m`` the largest magnitude left among them and ``R`` the optimizer steps left
until the deadline, ``ceil(target_at x total steps)`` (``--sparsity-target-at``, default 0.5). So
the selection reaches exactly 0 at the deadline whatever the phase length, and is then held at 0
(frozen, no re-ranking) while the rest of the network recovers for the remaining steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TargetSchedule:
    """When a sparsify phase's selection must reach 0, and the threshold of each step until then."""

    total_steps: int
    target_at: float = 0.5

    @property
    def deadline(self) -> int:
        """The optimizer step (1-based count) by which the selection reaches 0."""
        return max(1, math.ceil(self.target_at * self.total_steps))

    def held(self, done: int) -> bool:
        """Past the deadline after ``done`` steps: the selection is frozen and held at 0."""
        return done >= self.deadline

    def threshold(self, peak: torch.Tensor, done: int) -> torch.Tensor:
        """``tau`` for the next step: the largest selected magnitude over the steps left (>= 1)."""
        return peak / max(self.deadline - done, 1)
