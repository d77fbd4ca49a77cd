"""CNN backbones for small images, registered in timm's model registry on import.

After ``import toolbox.models`` the following names work with ``timm.create_model``:

* ``cifar_resnet20/32/44/56/110`` (kwarg ``shortcut="B"`` default, or ``"A"``),
* ``cifar_mobilenetv2`` (32x32) and ``tinyimagenet_mobilenetv2`` (64x64).

All accept ``num_classes``, ``in_chans`` and ``drop_rate``.

May import: ``toolbox.errors`` only.
"""

from __future__ import annotations

from typing import Any, List

import timm
from torch import nn

from toolbox.errors import UsageError

from . import cifar_resnet, mobilenetv2
from .cifar_resnet import BasicBlock, CifarResNet
from .mobilenetv2 import InvertedResidual, MobileNetV2

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "InvertedResidual",
    "MobileNetV2",
    "build_model",
    "cifar_resnet",
    "list_toolbox_models",
    "mobilenetv2",
]


def list_toolbox_models() -> List[str]:
    """Return the sorted names of the timm models registered by this package."""
    return sorted(timm.list_models(module=["cifar_resnet", "mobilenetv2"]))


def build_model(arch: str, num_classes: int, in_chans: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Create ``arch`` through timm's registry (CIFAR backbones are registered by toolbox)."""
    if not timm.is_model(arch):
        raise UsageError(f"Unknown --arch {arch!r}; `toolbox models list` shows the CIFAR backbones "
                         "and `toolbox models list '*'` every timm model.")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 **(model_kwargs or {}))
    except (TypeError, ValueError, AttributeError, KeyError, AssertionError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:150]
        raise UsageError(f"model_kwargs {model_kwargs!r} do not fit {arch} ({detail}); fix model_kwargs.") from None
