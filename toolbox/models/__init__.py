"""CNN backbones for small images, registered in timm's model registry on import.

After ``import toolbox.models`` the following names work with ``timm.create_model``:

* ``cifar_resnet20/32/44/56/110`` (kwarg ``shortcut="B"`` default, or ``"A"``),
* ``cifar_mobilenetv2`` (32x32) and ``tinyimagenet_mobilenetv2`` (64x64).

All accept ``num_classes``, ``in_chans`` and ``drop_rate``.
"""

from __future__ import annotations

from typing import List

import timm

from . import cifar_resnet, mobilenetv2
from .cifar_resnet import BasicBlock, CifarResNet
from .mobilenetv2 import InvertedResidual, MobileNetV2

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "InvertedResidual",
    "MobileNetV2",
    "cifar_resnet",
    "list_toolbox_models",
    "mobilenetv2",
]


def list_toolbox_models() -> List[str]:
    """Return the sorted names of the timm models registered by this package."""
    return sorted(timm.list_models(module=["cifar_resnet", "mobilenetv2"]))
