"""Shared fixtures: tiny, fast runs on the synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)  # robust against a busy neighbour; tests are tiny


@pytest.fixture
def tiny_values(tmp_path: Path) -> dict[str, Any]:
    """Options of a tiny 3-step run on the synthetic set (a few seconds on 2 cores)."""
    return {"arch": "cifar_resnet20", "dataset": "synthetic", "steps": 3, "epochs": 1,
            "batch_size": 64, "eval_batch_size": 256, "lr": 0.05, "seed": 0,
            "out": str(tmp_path / "run"), "device": "cpu"}
