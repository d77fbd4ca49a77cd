"""Register a new backbone in timm's registry from outside the toolbox, and run the pipeline on it.

``cifar_vgg11_bn`` is the VGG-11 with BatchNorm that Network Slimming prunes on CIFAR: eight
3x3 conv-BN-ReLU layers (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M), global average
pooling and one linear classifier, with a ``width`` multiplier for small runs. It behaves like a
timm model (``default_cfg`` with ``input_size``, ``num_features``, ``forward_features`` /
``forward_head``, ``get_classifier`` / ``reset_classifier``, ``features_only``), so everything in
the toolbox (channel groups, SST, AOD, pruning, checkpoints) works on it unchanged.

Use it from Python (importing this file registers the model)::

    import timm, register_architecture
    model = timm.create_model("cifar_vgg11_bn", num_classes=100, width=0.5)

or run the paper's pipeline (sst, aod, msl) on it; tiny settings on the synthetic set by default::

    python examples/register_architecture.py
    python examples/register_architecture.py --dataset fashion_mnist --width 0.5 --epochs 3 --steps 4
    python examples/register_architecture.py --resume runs/<dir>     # the model must be registered first

From the command line, ``--models-from`` imports this file before the registry is read; config.yaml
records it, so ``toolbox run --resume``, ``toolbox step`` and ``toolbox eval`` import it again::

    toolbox run --arch cifar_vgg11_bn --models-from examples/register_architecture.py --dataset synthetic

(``models_from: [examples/register_architecture.py]`` in a config file does the same; a module
name such as ``my_package.backbones`` works too).

Or ship it in a package: copy this file to ``my_package/backbones.py`` and declare it in the
package's ``pyproject.toml``; once the package is installed, every toolbox command (run, --resume,
step, eval, predict, export, serve) imports it before the registry is read, with no flag::

    [project.entry-points."toolbox.models"]
    backbones = "my_package.backbones"

    toolbox run --arch cifar_vgg11_bn --dataset synthetic
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from toolbox.models.cifar_resnet import CIFAR10_MEAN, CIFAR10_STD, consume_timm_kwargs

VGG11: Sequence[Union[int, str]] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG with BatchNorm for small images; module names ``features.{i}``, ``global_pool``, ``classifier``."""

    def __init__(self, cfg: Sequence[Union[int, str]] = VGG11, num_classes: int = 10, in_chans: int = 3,
                 width: float = 1.0, drop_rate: float = 0.0, **kwargs: Any) -> None:
        """Build the network.

        Args:
            cfg: Conv widths, ``"M"`` for a 2x2 max-pool (ceil mode, so 16x16 inputs work too).
            num_classes: Classifier outputs; 0 for none (``nn.Identity``).
            in_chans: Input image channels.
            width: Multiplier of every conv width (at least 8 channels each).
            drop_rate: Dropout before the classifier.
            **kwargs: Generic timm arguments (``global_pool="avg"``, ...); anything else is a TypeError.
        """
        super().__init__()
        consume_timm_kwargs(type(self).__name__, kwargs)
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        layers: List[nn.Module] = []
        self.feature_info: List[Dict[str, Any]] = []
        channels, reduction = in_chans, 1
        for item in cfg:
            if item == "M":
                self.feature_info.append(dict(num_chs=channels, reduction=reduction, module=f"features.{len(layers) - 1}"))
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                reduction *= 2
                continue
            out = max(8, int(round(int(item) * width)))
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.num_classes, self.drop_rate, self.in_chans = num_classes, drop_rate, in_chans
        self.num_features = self.head_hidden_size = channels
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        """The classifier module (or its attribute name)."""
        return "classifier" if name_only else self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A fresh classifier with ``num_classes`` outputs (after pruning, on the current width)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        last_bn = [m for m in self.features if isinstance(m, nn.BatchNorm2d)][-1]
        self.num_features = self.head_hidden_size = last_bn.num_features
        self.num_classes = num_classes
        ref = next(self.parameters())
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.classifier = head.to(device=ref.device, dtype=ref.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``(B, num_features, H', W')``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and (unless ``pre_logits``) the classifier."""
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    """Weight-less default cfg (32x32 CIFAR inputs)."""
    return {"url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (1, 1), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": CIFAR10_MEAN, "std": CIFAR10_STD,
            "first_conv": "features.0", "classifier": "classifier", **kwargs}


default_cfgs = generate_default_cfgs({"cifar_vgg11_bn": _cfg()})


def _create_cifar_vgg(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """Build through timm's ``build_model_with_cfg`` (no pretrained weights exist)."""
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights")
    feature_cfg = dict(out_indices=(0, 1, 2, 3, 4), flatten_sequential=True)
    return build_model_with_cfg(CifarVGG, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)


@register_model
def cifar_vgg11_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-11 with BN for CIFAR-sized images; ``width`` scales every layer."""
    return _create_cifar_vgg("cifar_vgg11_bn", pretrained, cfg=VGG11, **kwargs)


# ----------------------------------------------------------------------------- the pipeline on it
def run_pipeline(out: Optional[str] = None, **overrides: Any) -> Dict[str, Any]:
    """Run sst, aod, msl on ``cifar_vgg11_bn`` (tiny synthetic settings unless overridden)."""
    from toolbox.run.start import start_run

    values: Dict[str, Any] = {"arch": "cifar_vgg11_bn", "model_kwargs": {"width": 0.25}, "dataset": "synthetic",
                              "steps": 3, "epochs": 1, "batch_size": 64, "lr": 0.05, "plugins": "sst,aod,msl",
                              "device": "auto", "out": out}
    return start_run({**values, **overrides}).execute()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command line: run (or resume) the pipeline on the registered backbone and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic", help="synthetic, fashion_mnist, cifar100, auto, ...")
    parser.add_argument("--width", type=float, default=0.25, help="width multiplier of every conv layer")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--plugins", default="sst,aod,msl")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="run directory (default runs/<time>-<dataset>-<arch>)")
    parser.add_argument("--resume", type=Path, default=None, help="continue an interrupted run directory")
    args = parser.parse_args(argv)
    if args.resume is not None:
        from toolbox.run.start import resume_run

        results = resume_run(args.resume).execute()
    else:
        results = run_pipeline(args.out, dataset=args.dataset, model_kwargs={"width": args.width},
                               steps=args.steps, epochs=args.epochs, plugins=args.plugins, device=args.device)
    for step in results["steps"]:
        sparsity = step.get("sparsity")
        print(f"step {step['step']}: top-1 {step['top1']:.2f}%  params {step['params']:,}  "
              f"sparsity {'-' if sparsity is None else f'{sparsity:.3f}'}  "
              f"phases {','.join(p['phase'] for p in step['phases'])}")
    return results


if __name__ == "__main__":
    main()
