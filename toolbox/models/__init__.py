"""CNN backbones for small images, registered in timm's model registry on import.

After ``import toolbox.models`` the following names work with ``timm.create_model``:

* ``cifar_resnet20/32/44/56/110`` (kwarg ``shortcut="B"`` default, or ``"A"``),
* ``cifar_mobilenetv2`` (32x32) and ``tinyimagenet_mobilenetv2`` (64x64).

All accept ``num_classes``, ``in_chans`` and ``drop_rate``.

May import: ``toolbox.errors`` only.
"""

from __future__ import annotations

import math
import re
from typing import Any, List, Sequence

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
    "check_model_kwargs",
    "cifar_resnet",
    "list_toolbox_models",
    "mobilenetv2",
]


def list_toolbox_models() -> List[str]:
    """Return the sorted names of the timm models registered by this package."""
    return sorted(timm.list_models(module=["cifar_resnet", "mobilenetv2"]))


# timm keyword arguments that make it read a file, download weights or change what the model returns
LOADER_KEYS = frozenset({"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                         "features_only", "pretrained_strict", "num_classes", "in_chans"})
_NAME = re.compile(r"[A-Za-z0-9_-]{0,40}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _plain(value: Any) -> bool:
    """A plain number, bool, ``None``, short name (no path: letters, digits, ``_``, ``-``)."""
    if value is None or isinstance(value, int):  # bool is an int
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_model_kwargs(model_kwargs: Any, source: str = "model_kwargs") -> dict[str, Any]:
    """``model_kwargs`` if every key may reach timm and every value is plain data, else one sentence.

    Keys that make timm load a file or weights (``checkpoint_path``, ``pretrained``, ...) are refused;
    values must be plain numbers, bools, short names or flat lists of those (never a path).
    """
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict):
        raise UsageError(f"{source} must be a mapping of model options, got {type(model_kwargs).__name__}; "
                         "pass e.g. '{shortcut: A}'.")
    for key, value in model_kwargs.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise UsageError(f"{source} key {str(key)[:40]!r} is not a model option name; remove it.")
        if key in LOADER_KEYS:
            raise UsageError(f"{source} key {key!r} is not allowed (it makes timm load files or weights, or is set "
                             "by the toolbox); remove it.")
        items = value if isinstance(value, (list, tuple)) and len(value) <= 64 else [value]
        if not all(_plain(item) for item in items):
            raise UsageError(f"{source} value of {key!r} ({str(value)[:40]!r}) is not a plain number, bool, short "
                             "name or list of those; pass a plain value or remove it.")
    return dict(model_kwargs)


def build_model(arch: str, num_classes: int, in_chans: int, model_kwargs: dict[str, Any] | None = None,
                models_from: Sequence[str] = ()) -> nn.Module:
    """Create ``arch`` through timm's registry (CIFAR backbones are registered by toolbox), with
    ``model_kwargs`` that passed :func:`check_model_kwargs`, after importing ``models_from`` (files
    or modules that register backbones: :mod:`toolbox.models.sources`)."""
    from toolbox.models.sources import import_sources

    kwargs = check_model_kwargs(model_kwargs)
    import_sources(models_from)
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise UsageError(f"Unknown --arch {str(arch)[:60]!r}; `toolbox models list` shows the CIFAR backbones, "
                         "`toolbox models list '*'` every timm model; --models-from FILE or an installed package's "
                         "toolbox.models entry point adds your own.")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (TypeError, ValueError, AttributeError, KeyError, AssertionError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:150]
        raise UsageError(f"model_kwargs {model_kwargs!r} do not fit {arch} ({detail}); fix model_kwargs.") from None
