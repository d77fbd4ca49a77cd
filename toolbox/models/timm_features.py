"""What timm asks of a registered model, written once for the toolbox's backbones.

:class:`TimmFeatureModel` holds what timm's interface asks of every model (``forward``,
``forward_head``, ``get_classifier``, ``reset_classifier``, ``set_grad_checkpointing``,
``forward_intermediates``, ``prune_intermediate_layers``).  A backbone subclasses it, sets
``feature_info``, ``global_pool``, ``drop_rate``, ``num_features`` and ``grad_checkpointing``
in its constructor, names its classifier attribute in ``classifier_name``, and supplies the
few steps that depend on its layout: ``forward_features``, ``_classify``,
``_make_classifier``, ``_head_width``, ``_intermediates`` and ``_drop_after``.
:func:`small_image_cfg` builds their default (weight-less) pretrained cfg.
"""

# No ``from __future__ import annotations`` (see cifar_resnet.py: FX + TorchScript).

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models._features import feature_take_indices

from .timm_api import make_global_pool

__all__ = ["TimmFeatureModel", "small_image_cfg"]


class TimmFeatureModel(nn.Module):
    """Base class of the toolbox's backbones: timm's model interface on top of a few hooks.

    Subclasses set the class attribute ``classifier_name`` (the classifier's attribute name,
    which is also its ``state_dict`` prefix) and implement the hooks below.
    """

    classifier_name = "fc"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature map (implemented by the backbone)."""
        raise NotImplementedError

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the classifier to pooled features (a plain attribute call, so TorchScript can compile it)."""
        raise NotImplementedError

    def _make_classifier(self, num_classes: int) -> nn.Module:
        """A fresh classifier on ``num_features`` inputs, or ``nn.Identity`` for 0 classes."""
        raise NotImplementedError

    def _head_width(self) -> Optional[int]:
        """Channels of the last feature map, read from the network (pruning may change them);
        None keeps ``num_features``."""
        raise NotImplementedError

    def _intermediates(
        self, x: torch.Tensor, take_indices: List[int], max_index: int, stop_early: bool
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run the network, collecting the maps of the levels in ``take_indices``; return ``(last map, maps)``."""
        raise NotImplementedError

    def _drop_after(self, max_index: int) -> None:
        """Remove the layers after feature level ``max_index`` (nothing when it is the last level)."""
        raise NotImplementedError

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (saves memory) when ``enable``."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        """Return the classifier module (or its attribute name, ``classifier_name``)."""
        return self.classifier_name if name_only else getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs.

        ``num_features`` is re-read from the network first (:meth:`_head_width`), so this also
        works after torch-pruning has removed channels of the last layer.

        Args:
            num_classes: New number of outputs (0 for no classifier).
            global_pool: ``"avg"``, ``""`` (no pooling) or ``None`` (keep the current one).
        """
        if global_pool is not None:
            self.global_pool = make_global_pool(type(self).__name__, global_pool)
        ref = next(self.parameters())
        width = self._head_width()
        if width is not None:
            self.num_features = self.head_hidden_size = width
        self.num_classes = num_classes
        classifier = self._make_classifier(num_classes).to(device=ref.device, dtype=ref.dtype)
        setattr(self, self.classifier_name, classifier)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API: the feature maps of the levels in ``feature_info``.

        Args:
            x: Input images.
            indices: Levels to return: all (``None``), the last ``n`` (int) or a list.
            norm: Unused (no final norm layer); accepted for timm compatibility.
            stop_early: Skip the layers after the last requested level.
            output_fmt: Only ``"NCHW"``.
            intermediates_only: Return only the list of feature maps.

        Returns:
            ``(forward_features(x), maps)``, or ``maps`` alone with ``intermediates_only``.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        x, intermediates = self._intermediates(x, take_indices, max_index, stop_early)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the layers after the last requested level (and the head); return the kept levels.

        Args:
            indices: Levels to keep, as in :meth:`forward_intermediates`.
            prune_norm: Unused (no final norm layer).
            prune_head: Also remove the classifier and pooling.
        """
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self._drop_after(max_index)
        if prune_head or max_index < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (unless ``global_pool=""``), apply dropout and (unless ``pre_logits``) the classifier."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self._classify(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))


def small_image_cfg(first_conv: str, classifier: str, pool_size: Tuple[int, int], **kwargs: Any) -> Dict[str, Any]:
    """timm's default (weight-less) pretrained cfg of a small-image backbone: 10 classes at
    3 x 32 x 32, no crop, bilinear; ``kwargs`` (``mean``, ``std``, ``input_size`` ...) add or override."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "first_conv": first_conv,
        "classifier": classifier,
        **kwargs,
    }
