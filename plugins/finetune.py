"""``finetune``: the fine-tuning baseline.

Each step trains the previous step's model on the new shard only, with plain cross-entropy.
This is what the engine does with no plugins; the plugin names the baseline explicitly (results
tables show it) and refuses combinations that would make it something else.
"""

from __future__ import annotations

from typing import Any

import torch

from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl


class FineTune:
    """Fine-tuning on the new shard only (the lower baseline)."""

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        """Refuse being combined with ``joint``, which trains on the old shards too."""
        if "joint" in options.plugins:
            raise UsageError("finetune and joint are alternative baselines; enable one of them.")

    @hookimpl
    def toolbox_data_schedule(self, step: int, shards: list[torch.Tensor]) -> torch.Tensor:
        """Train on the new shard only."""
        return shards[step - 1]
