"""``finetune``: the fine-tuning baseline.

Each step trains the previous step's model on the new shard only, with plain cross-entropy.
This is what the engine does with no plugins; the plugin names the baseline explicitly (results
tables show it) and refuses combinations that would make it something else.
"""

from __future__ import annotations

import torch

from toolbox.hookspecs import hookimpl
from toolbox.plugin_host import capabilities as cap


class FineTune:
    """Fine-tuning on the new shard only (the lower baseline)."""

    provides = frozenset({cap.DATA_SCHEDULE, cap.WARM_START})
    search_space = {"lr": {"low": 0.01, "high": 0.2, "log": True}}  #: what `toolbox compare --trials` tunes
    conflicts = frozenset({cap.DATA_SCHEDULE})

    @hookimpl
    def toolbox_data_schedule(self, step: int, shards: list[torch.Tensor]) -> torch.Tensor:
        """Train on the new shard only."""
        return shards[step - 1]
