"""MobileNetV2 (Sandler et al., 2018) adapted to small images, registered in timm.

Standard inverted-residual setting (expansion t, channels c, repeats n, stride s)::

    t  c    n  s
    1  16   1  1
    6  24   2  2   (1 for 32x32 inputs)
    6  32   3  2
    6  64   4  2
    6  96   3  1
    6  160  3  2
    6  320  1  1

followed by a 1x1 conv to 1280 channels, global average pooling, dropout and a linear
``classifier``.  Every conv is followed by BN (network-slimming / BN-scale pruning acts on
BN weights); ReLU6 everywhere except after the linear projection of each block.

Variants:

* ``cifar_mobilenetv2`` (32x32): stem stride 1 and stride 1 in the 24-channel stage, as in
  the common CIFAR implementations; total stride 8, final feature map 4x4.
* ``tinyimagenet_mobilenetv2`` (64x64): stem stride 1, all other strides standard; total
  stride 16, final feature map 4x4 (same spatial sizes per stage as the CIFAR variant
  from the 32-channel stage on).

Both follow timm's model interface and pass timm's own model tests, as the CIFAR ResNets do.
"""

# No ``from __future__ import annotations`` (see cifar_resnet.py: FX + TorchScript).

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from .cifar_resnet import CIFAR10_MEAN, CIFAR10_STD
from .timm_api import consume_timm_kwargs, make_global_pool
from .timm_features import TimmFeatureModel, small_image_cfg

__all__ = ["InvertedResidual", "MobileNetV2", "CIFAR_SETTING", "TINYIMAGENET_SETTING"]

Setting = Sequence[Tuple[int, int, int, int]]

# (expansion t, out channels c, repeats n, first stride s)
CIFAR_SETTING: Setting = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
TINYIMAGENET_SETTING: Setting = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)

TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINYIMAGENET_STD = (0.2770, 0.2691, 0.2821)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10%."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), each conv followed by BN.

    Module names: ``conv_pw, bn1, act1`` (``nn.Identity`` when ``expand_ratio == 1``),
    ``conv_dw, bn2, act2, conv_pwl, bn3``.  The residual is added when the stride is 1
    and the input and output channels match (``has_skip``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        """Build the block.

        Args:
            in_channels: Input channels.
            out_channels: Output channels.
            stride: Stride of the depthwise conv (1 or 2).
            expand_ratio: Channel expansion ``t`` of the hidden layer.
        """
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_skip = stride == 1 and in_channels == out_channels
        if expand_ratio != 1:
            self.conv_pw: nn.Module = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.bn1: nn.Module = nn.BatchNorm2d(hidden)
            self.act1: nn.Module = nn.ReLU6(inplace=True)
        else:
            self.conv_pw, self.bn1, self.act1 = nn.Identity(), nn.Identity(), nn.Identity()
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pwl = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (plus the identity when ``has_skip``)."""
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.act2(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


class MobileNetV2(TimmFeatureModel):
    """MobileNetV2 with a configurable stem stride and block setting, timm-compatible.

    Module names: ``conv_stem, bn1, act1, blocks, conv_head, bn2, act2, global_pool,
    classifier``; ``blocks.{stage}.{i}`` are :class:`InvertedResidual` (e.g. ``blocks.2.0.bn1``).
    Feature levels (``feature_info``, ``forward_intermediates``): the last stage at each
    resolution, then the head conv's output.
    """

    classifier_name = "classifier"

    def __init__(
        self,
        setting: Setting = CIFAR_SETTING,
        num_classes: int = 10,
        in_chans: int = 3,
        stem_stride: int = 1,
        width_mult: float = 1.0,
        stem_chs: int = 32,
        num_features: int = 1280,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> None:
        """Build the network.

        Args:
            setting: Rows ``(t, c, n, s)`` of inverted-residual stages.
            num_classes: Classifier outputs; 0 replaces ``classifier`` by ``nn.Identity``.
            in_chans: Input image channels.
            stem_stride: Stride of the 3x3 stem conv (1 for small images, 2 for ImageNet).
            width_mult: Channel multiplier (channels rounded to multiples of 8).
            stem_chs: Stem channels before ``width_mult``.
            num_features: Channels of the last 1x1 conv (scaled only when ``width_mult > 1``).
            drop_rate: Dropout probability before the classifier.
            global_pool: ``"avg"`` or ``""`` (no pooling: with ``num_classes=0`` the model
                returns the feature map).
            device: Optional device to move the parameters to.
            dtype: Optional parameter dtype.
            **kwargs: Generic timm arguments (``drop_path_rate`` ...); anything else raises
                ``TypeError``.
        """
        super().__init__()
        consume_timm_kwargs(type(self).__name__, kwargs)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        in_channels = make_divisible(stem_chs * width_mult)
        self.conv_stem = nn.Conv2d(in_chans, in_channels, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = nn.ReLU6(inplace=True)
        reduction = stem_stride
        feature_info: List[Dict[str, Any]] = []
        stage_ends: List[int] = []  # per feature level but the last: index of its stage
        stages: List[nn.Module] = []
        for t, c, n, s in setting:
            out_channels = make_divisible(c * width_mult)
            blocks = [InvertedResidual(in_channels, out_channels, s, t)]
            blocks += [InvertedResidual(out_channels, out_channels, 1, t) for _ in range(n - 1)]
            if s > 1 and stages:
                # feature_info records the last stage at each resolution (before it drops)
                stage_ends.append(len(stages) - 1)
                feature_info.append(dict(num_chs=in_channels, reduction=reduction, module=f"blocks.{len(stages) - 1}"))
            reduction *= s
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.blocks = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = make_divisible(num_features * max(1.0, width_mult))
        self.conv_head = nn.Conv2d(in_channels, self.num_features, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.num_features)
        self.act2 = nn.ReLU6(inplace=True)
        feature_info.append(dict(num_chs=self.num_features, reduction=reduction, module="act2"))
        self.feature_info = feature_info
        self.stage_ends = stage_ends
        self.global_pool = make_global_pool(type(self).__name__, global_pool)
        self.classifier = self._make_classifier(num_classes)
        self._init_weights()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        """Linear classifier (normal(0, 0.01) weights, zero bias) or identity for 0 classes."""
        if num_classes <= 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(fc.weight, 0.0, 0.01)
        nn.init.zeros_(fc.bias)
        return fc

    def _init_weights(self) -> None:
        """Kaiming-normal (fan_out) convs, BN weight 1 / bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``classifier`` to the pooled features."""
        return self.classifier(x)

    def _head_width(self) -> Optional[int]:
        """Channels of the head conv's BN, or None once ``prune_intermediate_layers`` removed it."""
        return self.bn2.num_features if isinstance(self.bn2, nn.BatchNorm2d) else None

    def _intermediates(
        self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stem, stages and head conv (up to level ``max_index`` with ``stop_early``), collecting maps."""
        take_stages = [self.stage_ends[i] for i in take_indices if i < len(self.stage_ends)]
        head_level = len(self.stage_ends)
        last_stage = self.stage_ends[max_index] if stop_early and max_index < head_level else len(self.blocks) - 1
        intermediates = []
        x = self.act1(self.bn1(self.conv_stem(x)))
        for index, stage in enumerate(self.blocks[: last_stage + 1]):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)
            if index in take_stages:
                intermediates.append(x)
        if last_stage == len(self.blocks) - 1:
            x = self.act2(self.bn2(self.conv_head(x)))
            if head_level in take_indices:
                intermediates.append(x)
        return x, intermediates

    def _drop_after(self, max_index: int) -> None:
        """Cut the blocks after level ``max_index`` and remove the head conv (unless it is the last level)."""
        if max_index < len(self.stage_ends):
            self.blocks = self.blocks[: self.stage_ends[max_index] + 1]
            self.conv_head, self.bn2, self.act2 = nn.Identity(), nn.Identity(), nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the feature map after the 1280-channel head conv (4x4 for the default inputs)."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x, flatten=True)
        else:
            x = self.blocks(x)
        return self.act2(self.bn2(self.conv_head(x)))


default_cfgs = generate_default_cfgs({
    "cifar_mobilenetv2": small_image_cfg("conv_stem", "classifier", (4, 4), mean=CIFAR10_MEAN, std=CIFAR10_STD),
    "tinyimagenet_mobilenetv2": small_image_cfg(
        "conv_stem", "classifier", (4, 4),
        num_classes=200, input_size=(3, 64, 64), mean=TINYIMAGENET_MEAN, std=TINYIMAGENET_STD,
    ),
})


def _create_mobilenetv2(variant: str, pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """Build a :class:`MobileNetV2` through timm's ``build_model_with_cfg`` (no weights exist)."""
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights")
    setting = kwargs["setting"]
    num_feature_levels = sum(1 for i, row in enumerate(setting) if i > 0 and row[3] > 1) + 1
    feature_cfg = dict(out_indices=tuple(range(num_feature_levels)), flatten_sequential=True)
    feature_cfg.update(kwargs.pop("feature_cfg", None) or {})  # the caller's (e.g. feature_cls="fx") win
    return build_model_with_cfg(MobileNetV2, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 (width 1.0) for 32x32 inputs: stem stride 1, 24-channel stage stride 1."""
    kwargs.setdefault("setting", CIFAR_SETTING)
    return _create_mobilenetv2("cifar_mobilenetv2", pretrained, stem_stride=1, **kwargs)


@register_model
def tinyimagenet_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 (width 1.0) for 64x64 inputs: stem stride 1, standard strides, 4x4 output."""
    kwargs.setdefault("setting", TINYIMAGENET_SETTING)
    return _create_mobilenetv2("tinyimagenet_mobilenetv2", pretrained, stem_stride=1, **kwargs)
