"""toolbox: plugin-based PyTorch training of CNNs on accumulated new data."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"

from toolbox import _legacy  # noqa: E402

_legacy.install()  # the flat import paths of 0.2, with a DeprecationWarning


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Registers the toolbox's backbones (``import toolbox.models``) the moment timm is imported, so
    that ``timm.create_model('cifar_resnet20')`` works after ``import toolbox`` while ``import
    toolbox`` itself (and so ``toolbox --help``) imports neither timm nor torch."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> Any:
        """timm's own spec, its loader wrapped to import ``toolbox.models`` once timm is loaded."""
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module"):
            run_timm = loader.exec_module

            def exec_module(module: Any) -> None:
                run_timm(module)
                importlib.import_module("toolbox.models")

            loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    importlib.import_module("toolbox.models")
elif not any(isinstance(finder, _RegisterWithTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())


def __getattr__(name: str) -> Any:
    """``toolbox.models`` (the backbones) on first use."""
    if name == "models":
        return importlib.import_module("toolbox.models")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

if TYPE_CHECKING:
    from torch import nn

    from toolbox.deploy.predictor import Predictor


def load_model(path: str) -> "nn.Module":
    """The model of a serve file (``RUN_DIR/serve/step{k}.pt``) or any toolbox checkpoint, rebuilt
    (compact structure included) with its weights, in eval mode."""
    from toolbox.plugin_host.entry_points import import_model_packages
    from toolbox.storage import checkpoint

    import_model_packages()
    return checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(path))


def load_predictor(path: str, device: str = "cpu", batch_size: int = 256) -> "Predictor":
    """The model of a serve file, checkpoint or run directory (its promoted model) with the
    preprocessing it was trained with: ``predict``, ``preprocess``, ``classes``, ``recipe``
    (see :mod:`toolbox.deploy.predictor`)."""
    from toolbox.deploy.predictor import load_predictor as load

    return load(path, device=device, batch_size=batch_size)
