"""A model with its preprocessing: ``toolbox.load_predictor(path)``.

::

    import toolbox
    predictor = toolbox.load_predictor("runs/shop")        # a run directory, serve file or checkpoint
    predictor.predict("photo.jpg", top_k=3)                 # Prediction(classes=[...], probabilities=[...])
    predictor.predict(["a.png", "b.png"])                   # one Prediction per input
    predictor.preprocess(images)                            # float tensor N x C x S x S, as the model sees it

The stable API (``toolbox serve`` and ``toolbox export`` build on it):

- :func:`load_predictor` ``(path, device="cpu") -> Predictor``. ``path``: a serve file
  (``RUN/serve/step{k}.pt``), any toolbox checkpoint, or a run directory, meaning its promoted
  model (:func:`toolbox.deploy.model_file.resolve_model`).
- ``Predictor.predict(inputs, top_k=1)``: one input gives one :class:`Prediction`, a list (or a
  4-D array) gives a list of them; an unreadable input raises :class:`ImageInputError` (a
  ``UsageError``) naming it.
- ``Predictor.predict_many(inputs, top_k=1)``: a list of :class:`Prediction`, an unreadable input
  giving one with ``error`` set instead of raising.
- ``Predictor.probabilities(inputs) -> tensor N x K`` (softmax over every class),
  ``Predictor.preprocess(inputs) -> float32 tensor N x C x S x S``, ``Predictor.pixels(input)
  -> uint8 array C x S x S`` (before normalization).
- Attributes: ``classes`` (names in output order), ``recipe`` (the plain preprocessing fields of
  :mod:`toolbox.data.recipe`), ``step``, ``model`` (in eval mode), ``path``, ``device``.

An input is a file path (``str`` or ``os.PathLike``), ``bytes``, a binary file object, a PIL
image, or a uint8 numpy array H x W (grey), H x W x 1, H x W x 3 (RGB) or H x W x 4 (RGBA). Files
and bytes are decoded by :func:`toolbox.data.image_decode.decode_image`, images and arrays by its
:func:`~toolbox.data.image_decode.image_pixels`: the code that decoded the training images
(colour conversion, the pad / crop / resize rule, then ``(x / 255 - mean) / std``). A PIL image
is used as it is: a JPEG that a path would have decoded with Pillow's reduced-scale draft (one at
least twice the image size) may differ slightly from the same JPEG opened by the caller.
Inference runs in batches, in eval mode, under ``torch.inference_mode()``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from toolbox.data.image_decode import decode_image, image_from_array, image_pixels
from toolbox.data.pipeline import normalize_batch
from toolbox.data.recipe import checkpoint_recipe
from toolbox.deploy.model_file import resolve_model
from toolbox.errors import UsageError
from toolbox.plugin_host.entry_points import import_model_packages
from toolbox.runtime.device import select_device
from toolbox.storage import checkpoint as ckpt

#: One input: a path, bytes, a binary file object, a PIL image or a uint8 array.
ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, io.IOBase, Image.Image, np.ndarray]


class ImageInputError(UsageError):
    """An input that is not an image the predictor can read (the message names it and why)."""


@dataclass
class Prediction:
    """The top-k of one input: ``classes`` and their ``probabilities``, most likely first; for
    :meth:`Predictor.predict_many`, ``error`` says why an input could not be read (then both are empty)."""

    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str | None:
        """The most likely class (``None`` for an unreadable input)."""
        return self.classes[0] if self.classes else None


def describe(item: Any) -> str:
    """A short name of an input for messages: its path, or its kind."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    name = getattr(item, "name", None)
    return str(name) if isinstance(name, str) else type(item).__name__


def as_batch(inputs: Any) -> tuple[list[Any], bool]:
    """``(items, single)``: a list or tuple, or a 4-D array (N x H x W x C), is a batch; anything
    else one input."""
    if isinstance(inputs, (list, tuple)):
        return list(inputs), False
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        return list(inputs), False
    return [inputs], True


class Predictor:
    """A model with the recipe that turns images into its inputs (see the module docstring)."""

    def __init__(self, model: nn.Module, recipe: dict[str, Any], *, step: int | None = None,
                 path: Path | None = None, device: torch.device | str = "cpu", batch_size: int = 256) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.recipe = recipe
        self.classes: list[str] = list(recipe["classes"])
        self.step = step
        self.path = path
        self.batch_size = batch_size
        self.image_size = int(recipe["image_size"])
        self.channels = int(recipe["channels"])

    def pixels(self, item: ImageInput) -> np.ndarray:
        """One input as the uint8 ``channels`` x ``image_size`` x ``image_size`` array training saw."""
        size, channels = self.image_size, self.channels
        try:
            if isinstance(item, (str, os.PathLike)):
                return decode_image(os.fspath(item), size, channels)
            if isinstance(item, (bytes, bytearray, memoryview)):
                return decode_image(io.BytesIO(bytes(item)), size, channels)
            if isinstance(item, Image.Image):
                return image_pixels(item, size, channels)
            if isinstance(item, np.ndarray):
                return image_pixels(image_from_array(item), size, channels)
            if hasattr(item, "read"):
                return decode_image(item, size, channels)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is an unreadable input
            reason = f"{type(exc).__name__}: {exc}".strip().rstrip(".")
            raise ImageInputError(f"Cannot read the image {describe(item)} ({reason}); pass an image file Pillow "
                                  "reads, its bytes, a PIL image or a uint8 array.") from None
        raise ImageInputError(f"A {type(item).__name__} is not an image input; pass a file path, bytes, a binary "
                              "file, a PIL image or a uint8 numpy array (H x W or H x W x C).")

    def preprocess(self, inputs: Any) -> torch.Tensor:
        """The inputs (one or a batch) as the float32 N x C x S x S tensor the model takes."""
        items, _ = as_batch(inputs)
        return self._normalized(self._stack(items))

    def _normalized(self, pixels: np.ndarray) -> torch.Tensor:
        return normalize_batch(torch.from_numpy(pixels), self.recipe["mean"], self.recipe["std"])

    def logits(self, pixels: np.ndarray) -> torch.Tensor:
        """The model's outputs (float32, on the CPU) for uint8 N x C x S x S ``pixels``, in batches."""
        outputs = [torch.zeros((0, len(self.classes)))]
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                batch = self._normalized(pixels[start:start + self.batch_size]).to(self.device)
                outputs.append(self.model(batch).float().cpu())
        return torch.cat(outputs)

    def probabilities(self, inputs: Any) -> torch.Tensor:
        """Softmax probabilities (N x number of classes) of the inputs (one or a batch)."""
        items, _ = as_batch(inputs)
        return torch.softmax(self.logits(self._stack(items)), dim=1)

    def _stack(self, items: Sequence[Any]) -> np.ndarray:
        return self._stack_pixels([self.pixels(item) for item in items])

    def predict(self, inputs: Any, top_k: int = 1) -> Prediction | list[Prediction]:
        """The top-``top_k`` classes and probabilities: one :class:`Prediction` for one input, a list
        for a batch; an unreadable input raises :class:`ImageInputError`."""
        items, single = as_batch(inputs)
        found = self._top(self.logits(self._stack(items)), top_k)
        return found[0] if single else found

    def predict_many(self, inputs: Sequence[Any], top_k: int = 1) -> list[Prediction]:
        """One :class:`Prediction` per input, in order, decoded ``batch_size`` at a time (a folder of
        any size fits in memory); an unreadable input gets one with ``error``."""
        results: list[Prediction] = []
        for start in range(0, len(inputs), self.batch_size):
            good, chunk = [], []
            for item in inputs[start:start + self.batch_size]:
                try:
                    good.append(self.pixels(item))
                    chunk.append(None)
                except ImageInputError as exc:
                    chunk.append(Prediction(error=str(exc)))
            found = iter(self._top(self.logits(self._stack_pixels(good)), top_k))
            results += [result if result is not None else next(found) for result in chunk]
        return results

    def _stack_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        if not pixels:
            return np.zeros((0, self.channels, self.image_size, self.image_size), np.uint8)
        return np.stack(pixels)

    def _top(self, logits: torch.Tensor, top_k: int) -> list[Prediction]:
        """Top-k of each row (ranked by logits, as ``toolbox eval`` ranks them)."""
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}.")
        k = min(top_k, logits.shape[1])
        probs = torch.softmax(logits, dim=1)
        order = logits.topk(k, dim=1).indices
        return [Prediction(classes=[self.classes[i] for i in row.tolist()],
                           probabilities=probs[n, row].tolist(), indices=row.tolist())
                for n, row in enumerate(order)]


def load_predictor(path: str | os.PathLike[str], device: str = "cpu", batch_size: int = 256) -> Predictor:
    """The :class:`Predictor` of a serve file, a toolbox checkpoint or a run directory (its
    promoted model: :func:`~toolbox.deploy.model_file.resolve_model`); ``device``: cpu, cuda or auto."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}.")
    file = resolve_model(path)
    data = ckpt.load_checkpoint(file)
    recipe = checkpoint_recipe(data, file)
    import_model_packages()
    model = ckpt.model_from_checkpoint(data)
    return Predictor(model, recipe, step=data.get("step"), path=file, device=select_device(device),
                     batch_size=batch_size)
