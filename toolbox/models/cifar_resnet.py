"""CIFAR ResNets (He et al., 2016, Sec. 4.2) registered in timm's model registry.

The network is a 3x3 conv (16 channels) + BN + ReLU stem, three stages of ``n`` basic
blocks with 16/32/64 channels (stride 2 at the first block of stages 2 and 3), global
average pooling and a linear classifier ``fc``.  Depth is ``6n + 2``: 20, 32, 44, 56, 110.

Two shortcut options are available through the ``shortcut`` keyword:

* ``"B"`` (default): a 1x1 conv (with stride) + BN projection where the shape changes,
  identity otherwise.  This variant traces cleanly with torch-pruning.
* ``"A"``: the parameter-free shortcut of the paper (spatial subsampling + zero-padding of
  the extra channels).  torch-pruning cannot follow the zero padding, so do not prune it.

Usage::

    import timm
    import toolbox.models  # registers the models
    model = timm.create_model("cifar_resnet56", num_classes=100, shortcut="A")

The models follow timm's model interface (``forward_features``, ``forward_head``,
``reset_classifier(0, "")``, ``forward_intermediates``, ``set_grad_checkpointing``) and pass
timm's own model tests (tests/test_timm_conformance.py), TorchScript and FX included.
"""

# No ``from __future__ import annotations`` here: FX writes string annotations of ``forward``
# verbatim into its generated code, which TorchScript then cannot read.

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

# consume_timm_kwargs is also imported from here (examples/register_architecture.py)
from .timm_api import consume_timm_kwargs, make_global_pool
from .timm_features import TimmFeatureModel, small_image_cfg

__all__ = ["BasicBlock", "CifarResNet", "SHORTCUT_OPTIONS"]

SHORTCUT_OPTIONS = ("A", "B")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by 2 and zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        """Store the padding geometry (no parameters).

        Args:
            in_channels: Channels of the block input.
            out_channels: Channels of the block output (>= ``in_channels``).
            stride: Spatial stride of the block (1 or 2).
        """
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option-A shortcut can only add channels")
        self.stride = stride
        extra = out_channels - in_channels
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` subsampled and zero-padded along the channel axis."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        """Describe stride and padding in ``print(model)``."""
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection, ReLU after the addition.

    Module names: ``conv1, bn1, act1, conv2, bn2, shortcut, act2``; ``shortcut`` is an
    ``nn.Identity``, a :class:`PadShortcut` (option A) or ``nn.Sequential(conv, bn)``
    (option B, names ``shortcut.0`` / ``shortcut.1``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B") -> None:
        """Build the block.

        Args:
            in_channels: Input channels.
            out_channels: Output channels.
            stride: Stride of the first conv (and of the shortcut).
            shortcut: ``"A"`` (pad) or ``"B"`` (1x1 conv + BN projection).
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(TimmFeatureModel):
    """ResNet-(6n+2) for 32x32 inputs with a timm-compatible interface.

    Module names: ``conv1, bn1, act1, layer1, layer2, layer3, global_pool, fc``; blocks are
    ``layer{1,2,3}.{i}`` (e.g. ``layer1.0.bn1``).  Feature levels (``feature_info``,
    ``forward_intermediates``): 0 the stem, 1-3 the stages.
    """

    classifier_name = "fc"

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "B",
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        widths: Tuple[int, int, int] = (16, 32, 64),
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> None:
        """Build the network.

        Args:
            depth: Total depth ``6n + 2`` (20, 32, 44, 56, 110, ...).
            num_classes: Classifier outputs; 0 replaces ``fc`` by ``nn.Identity``.
            in_chans: Input image channels (1 for (Fashion-)MNIST).
            shortcut: ``"B"`` (projection, default) or ``"A"`` (zero padding).
            drop_rate: Dropout probability before the classifier.
            global_pool: ``"avg"`` or ``""`` (no pooling: with ``num_classes=0`` the model
                returns the feature map).
            widths: Channels of the three stages.
            device: Optional device to move the parameters to.
            dtype: Optional parameter dtype.
            **kwargs: Generic timm arguments (``drop_path_rate`` ...); anything else raises
                ``TypeError``.
        """
        super().__init__()
        consume_timm_kwargs(type(self).__name__, kwargs)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        shortcut = shortcut.upper()
        if shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(f"shortcut must be one of {SHORTCUT_OPTIONS}, got {shortcut!r}")
        self.depth = depth
        self.shortcut = shortcut
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        n = (depth - 2) // 6  # basic blocks per stage

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(widths[0], widths[0], n, 1, shortcut)
        self.layer2 = self._make_stage(widths[0], widths[1], n, 2, shortcut)
        self.layer3 = self._make_stage(widths[1], widths[2], n, 2, shortcut)
        self.feature_info: List[Dict[str, Any]] = [
            dict(num_chs=widths[0], reduction=1, module="act1"),
            dict(num_chs=widths[0], reduction=1, module="layer1"),
            dict(num_chs=widths[1], reduction=2, module="layer2"),
            dict(num_chs=widths[2], reduction=4, module="layer3"),
        ]

        self.num_features = self.head_hidden_size = widths[2]
        self.global_pool = make_global_pool(type(self).__name__, global_pool)
        self.fc = self._make_classifier(num_classes)
        self._init_weights()
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    @staticmethod
    def _make_stage(in_channels: int, width: int, num_blocks: int, stride: int, shortcut: str) -> nn.Sequential:
        """Stack ``num_blocks`` basic blocks; only the first one changes shape."""
        blocks = [BasicBlock(in_channels, width, stride, shortcut)]
        blocks += [BasicBlock(width, width, 1, shortcut) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        """Kaiming-normal convs, BN weight 1 / bias 0 (linear keeps PyTorch's default)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        """Linear classifier on the pooled features, or identity when ``num_classes == 0``."""
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``fc`` to the pooled features."""
        return self.fc(x)

    def _head_width(self) -> Optional[int]:
        """Channels of the last feature map, read from the network (pruning may have changed it)."""
        for layer in (self.layer3, self.layer2, self.layer1):
            if len(layer):
                return layer[-1].bn2.num_features
        return self.bn1.num_features

    def _intermediates(
        self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stem, then the stages (up to level ``max_index`` with ``stop_early``), collecting maps."""
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        layers = [self.layer1, self.layer2, self.layer3]
        for level, layer in enumerate(layers[:max_index] if stop_early else layers, start=1):
            x = checkpoint_seq(layer, x) if self.grad_checkpointing else layer(x)
            if level in take_indices:
                intermediates.append(x)
        return x, intermediates

    def _drop_after(self, max_index: int) -> None:
        """Replace the stages after level ``max_index`` by empty ``nn.Sequential`` s."""
        for name in ("layer1", "layer2", "layer3")[max_index:]:
            setattr(self, name, nn.Sequential())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature map, shape ``(B, num_features, H/4, W/4)``."""
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)


default_cfgs = generate_default_cfgs({
    f"cifar_resnet{d}": small_image_cfg("conv1", "fc", (8, 8), mean=CIFAR10_MEAN, std=CIFAR10_STD)
    for d in (20, 32, 44, 56, 110)
})


def _create_cifar_resnet(variant: str, depth: int, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """Build a :class:`CifarResNet` through timm's ``build_model_with_cfg`` (no weights exist)."""
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights")
    return build_model_with_cfg(
        CifarResNet,
        variant,
        pretrained=False,
        feature_cfg={"out_indices": (0, 1, 2, 3), **(kwargs.pop("feature_cfg", None) or {})},  # the caller's win
        depth=depth,
        **kwargs,
    )


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (n=3); ``shortcut="B"`` by default, ``"A"`` for the paper's option A."""
    return _create_cifar_resnet("cifar_resnet20", 20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (n=5)."""
    return _create_cifar_resnet("cifar_resnet32", 32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (n=7)."""
    return _create_cifar_resnet("cifar_resnet44", 44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (n=9)."""
    return _create_cifar_resnet("cifar_resnet56", 56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (n=18)."""
    return _create_cifar_resnet("cifar_resnet110", 110, pretrained, **kwargs)
