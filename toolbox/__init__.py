"""toolbox: plugin-based PyTorch training of CNNs on accumulated new data."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.3.0"

from toolbox import (
    _legacy,  # noqa: E402
    models,  # noqa: E402,F401  (registers the CIFAR backbones in timm)
)

_legacy.install()  # the flat import paths of 0.2, with a DeprecationWarning

if TYPE_CHECKING:
    from torch import nn

    from toolbox.deploy.predictor import Predictor


def load_model(path: str) -> "nn.Module":
    """The model of a serve file (``RUN_DIR/serve/step{k}.pt``) or any toolbox checkpoint, rebuilt
    (compact structure included) with its weights, in eval mode."""
    from toolbox.storage import checkpoint

    return checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(path))


def load_predictor(path: str, device: str = "cpu", batch_size: int = 256) -> "Predictor":
    """The model of a serve file, checkpoint or run directory (its promoted model) with the
    preprocessing it was trained with: ``predict``, ``preprocess``, ``classes``, ``recipe``
    (see :mod:`toolbox.deploy.predictor`)."""
    from toolbox.deploy.predictor import load_predictor as load

    return load(path, device=device, batch_size=batch_size)
