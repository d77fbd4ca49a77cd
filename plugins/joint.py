"""``joint``: the upper-bound baseline that keeps all data seen so far.

Step k trains the previous step's model on shards 1..k together. It needs the old data, which
the setting forbids, so it only serves as the reference a method should approach. In a
``--shards`` run (one folder per step) step k trains on every step folder 1..k still present,
gathered into memory; a folder deleted since (e.g. before ``toolbox step``) is left out.
"""

from __future__ import annotations

import torch

from toolbox.hookspecs import hookimpl
from toolbox.plugin_host import capabilities as cap


class Joint:
    """Joint training on every shard seen so far (the upper bound)."""

    provides = frozenset({cap.DATA_SCHEDULE})
    search_space = {"lr": {"low": 0.01, "high": 0.2, "log": True}}  #: what `toolbox compare --trials` tunes
    conflicts = frozenset({cap.DATA_SCHEDULE})

    @hookimpl
    def toolbox_data_schedule(self, step: int, shards: list[torch.Tensor]) -> torch.Tensor:
        """Train on the union of shards 1..step."""
        return torch.cat(list(shards[:step])).sort().values
