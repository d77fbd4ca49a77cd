"""toolbox: plugin-based PyTorch training of CNNs on accumulated new data."""

from __future__ import annotations

__version__ = "0.2.0"

from toolbox import models  # noqa: E402,F401  (registers the CIFAR backbones in timm)
