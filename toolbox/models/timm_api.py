"""Keyword arguments and pooling of timm's model interface, shared by the toolbox's backbones.

timm's training scripts and ``timm.create_model`` may pass generic keyword arguments to any
model (``global_pool``, ``drop_path_rate``, ``scriptable`` ...): :func:`consume_timm_kwargs`
accepts and drops the ones a small CNN does not use, and :func:`make_global_pool` builds timm's
pooling module for the pooling types the backbones support (``"avg"``, or ``""`` for none).
"""

import warnings
from typing import Any, Dict

from timm.layers import SelectAdaptivePool2d

__all__ = ["POOL_TYPES", "consume_timm_kwargs", "make_global_pool"]

POOL_TYPES = ("avg", "")  # global average pooling, or none (the head returns the feature map)

# timm-wide keyword arguments that training scripts may pass to any model.  They are
# accepted and ignored (with a warning when they ask for a feature we do not implement).
_UNSUPPORTED_TIMM_KWARGS = ("drop_path_rate", "drop_block_rate")
_IGNORED_TIMM_KWARGS = ("img_size", "scriptable", "exportable", "no_jit")


def consume_timm_kwargs(model_name: str, kwargs: Dict[str, Any]) -> None:
    """Validate and drop generic timm keyword arguments a small CIFAR model does not use.

    Args:
        model_name: Class name used in messages.
        kwargs: Left-over keyword arguments of the model constructor (emptied in place).

    Raises:
        ValueError: ``global_pool`` is anything but ``"avg"`` (models that support other
            pooling types take ``global_pool`` as an argument, so it never reaches here).
        TypeError: an unknown keyword is left (most likely a typo such as ``shortcuts=``).
    """
    global_pool = kwargs.pop("global_pool", "avg")
    if global_pool != "avg":
        raise ValueError(f"{model_name} only supports global_pool='avg', got {global_pool!r}")
    for key in _UNSUPPORTED_TIMM_KWARGS:
        value = kwargs.pop(key, None)
        if value:
            warnings.warn(f"{model_name} ignores {key}={value!r} (not implemented)", stacklevel=3)
    for key in _IGNORED_TIMM_KWARGS:
        kwargs.pop(key, None)
    if kwargs:
        raise TypeError(f"{model_name} got unexpected keyword arguments: {sorted(kwargs)}")


def make_global_pool(model_name: str, pool_type: str) -> SelectAdaptivePool2d:
    """timm's pooling module for ``pool_type`` ``"avg"`` (pool and flatten) or ``""`` (pass through).

    Raises:
        ValueError: any other pooling type.
    """
    if pool_type not in POOL_TYPES:
        raise ValueError(f"{model_name} supports global_pool='avg' or '' (no pooling), got {pool_type!r}")
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
