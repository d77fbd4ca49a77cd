"""``replay``: train step k on shard k plus a small buffer of images from the earlier shards.

The buffer holds ``--replay-per-class`` K images of every class, drawn uniformly (seeded by the
run's seed and the step) from shards 1..k-1, so it is the same after a resume. This breaks the
setting's "no old data" rule **on purpose**: it is an example of a data-schedule plugin and the
usual rehearsal baseline, not part of the method.

The ``toolbox_data_schedule`` hook receives index tensors only, so the plugin reads the training
labels itself (once, from the run's dataset) to keep K images per class.
"""

from __future__ import annotations

from typing import Any

import torch

from toolbox.data import load_dataset
from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption


def replay_buffer(labels: torch.Tensor, earlier: list[torch.Tensor], per_class: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Up to ``per_class`` indices of every class drawn from the ``earlier`` shards (sorted)."""
    if not earlier:
        return torch.zeros(0, dtype=torch.long)
    pool = torch.cat(list(earlier))
    pool_labels = labels[pool]
    chosen = []
    for cls in torch.unique(pool_labels).tolist():
        members = pool[pool_labels == cls]
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:per_class]])
    return torch.cat(chosen).sort().values


class Replay:
    """A rehearsal data schedule: the new shard plus K images per class from the earlier shards."""

    def __init__(self) -> None:
        """Start unconfigured; :meth:`toolbox_configure` reads the options."""
        self.options: Any = None
        self.per_class = 20
        self.labels: torch.Tensor | None = None
        self.buffer_size = 0

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        """Declare ``--replay-per-class``."""
        return [PluginOption("replay_per_class", int, 20, "images per class kept from the earlier shards",
                             check=lambda v: None if v >= 1 else "keep at least 1 image per class.")]

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        """Keep the options; refuse the other data schedules (only one can choose the data)."""
        self.options, self.per_class = options, int(options.plugin["replay_per_class"])
        clash = [name for name in ("joint", "finetune") if name in options.plugins]
        if clash:
            raise UsageError(f"replay and {clash[0]} both choose the training data; enable one of them.")

    def _labels(self) -> torch.Tensor:
        """The training labels of the run's dataset (loaded once)."""
        if self.labels is None:
            self.labels = load_dataset(self.options.dataset, self.options.data_root).train_y.cpu()
        return self.labels

    @hookimpl
    def toolbox_data_schedule(self, step: int, phase: str, shards: list[torch.Tensor]) -> torch.Tensor:
        """Shard ``step`` plus the replay buffer drawn from shards 1..step-1."""
        new = shards[step - 1]
        if step == 1:
            self.buffer_size = 0
            return new
        seed = int(getattr(self.options, "seed", 0)) * 1000 + step
        buffer = replay_buffer(self._labels(), list(shards[: step - 1]), self.per_class,
                               torch.Generator().manual_seed(seed))
        self.buffer_size = int(buffer.numel())
        return torch.cat([new.cpu(), buffer]).sort().values

    @hookimpl
    def toolbox_phase_start(self, ctx: Any) -> None:
        """Report the buffer size of this phase in the results (``replay_images``)."""
        ctx.phase_metrics["replay_images"] = self.buffer_size
