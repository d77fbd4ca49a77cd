"""The preprocessing recipe a serve file carries: how an image becomes the model's input.

Plain fields (numbers, strings, lists) under ``checkpoint["preprocessing"]``, so a user without
the toolbox can read and reproduce them::

    {"format": "toolbox-preprocessing/1", "dataset": "imagefolder", "channels": 1,
     "pillow_mode": "L", "colour": "...", "wide_grey": "...", "image_size": 32,
     "geometry": "shrink-center-crop-pad", "geometry_rule": "...", "jpeg_draft": "...",
     "scaling": "...", "mean": [0.28], "std": [0.35], "classes": ["ant", "bee"],
     "source_images": "..."}

The geometry is :mod:`toolbox.data.image_decode`'s for every data source: the built-in datasets'
images already have their size (Fashion-MNIST's 28 x 28 are padded to 32 by the same rule), so an
image of another size goes through the rule as an image-folder one does.
:func:`checkpoint_recipe` reads it back, or derives it for a file written before it existed
(from ``input_size``, ``normalization`` and ``classes``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from toolbox.data.class_names import DATASET_CLASSES, class_names  # noqa: F401  (DATASET_CLASSES: its old home)
from toolbox.errors import CheckpointError

RECIPE_FORMAT = "toolbox-preprocessing/1"
#: The name of :mod:`toolbox.data.image_decode`'s geometry.
GEOMETRY = "shrink-center-crop-pad"
GEOMETRY_RULE = (
    "a shorter side longer than image_size is resized to image_size (bilinear; the other side "
    "int(image_size * long / short)), then the image is centre-cropped: a side longer than image_size "
    "keeps pixels from round((side - image_size) / 2); a side shorter than image_size is zero-padded, "
    "(image_size - side) // 2 pixels before and the rest after; an image is never enlarged")
JPEG_DRAFT = "a JPEG file is opened with Pillow's draft(pillow_mode, (image_size, image_size)) before decoding"
WIDE_GREY = "16- and 32-bit grey pixels v are scaled to (clip(v, 0, 65535) * 255 + 32767) // 65535 first"
SCALING = "float32 (pixel / 255 - mean) / std per channel, laid out N x C x image_size x image_size"
SOURCE_IMAGES = {
    "fashion_mnist": "Fashion-MNIST's 28 x 28 grey images, zero-padded by 2 pixels on every side to 32 x 32",
    "cifar100": "CIFAR-100's 32 x 32 RGB images, as they are",
    "tiny_imagenet": "Tiny ImageNet's 64 x 64 JPEGs converted to RGB, as they are",
    "synthetic": "shapes and textures drawn in memory at this size",
    "imagefolder": "image files decoded by this rule",
}


def make_recipe(*, channels: int, image_size: int, mean: Sequence[float], std: Sequence[float],
                classes: Sequence[str] | None, num_classes: int, dataset: str | None) -> dict[str, Any]:
    """The recipe of a model trained on ``channels`` x ``image_size`` x ``image_size`` images of
    ``dataset`` normalized by ``mean``/``std``; its class names are
    :func:`~toolbox.data.class_names.class_names` (``classes``, else the dataset's known names,
    else the label numbers)."""
    names = class_names(classes, num_classes, dataset)
    mode = "L" if channels == 1 else "RGB"
    return {
        "format": RECIPE_FORMAT, "dataset": dataset, "channels": int(channels), "pillow_mode": mode,
        "colour": f"every image is converted with Pillow's convert('{mode}')"
                  + (" (grey from colour: ITU-R 601-2 luma)" if channels == 1 else " (grey copied to R, G, B; "
                                                                                  "alpha dropped)"),
        "wide_grey": WIDE_GREY, "image_size": int(image_size), "geometry": GEOMETRY, "geometry_rule": GEOMETRY_RULE,
        "jpeg_draft": JPEG_DRAFT, "scaling": SCALING, "mean": [float(v) for v in mean],
        "std": [float(v) for v in std], "classes": [str(c) for c in names],
        "source_images": SOURCE_IMAGES.get(dataset or "", "images of this size"),
    }


def checkpoint_recipe(checkpoint: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """The recipe of a (validated) toolbox checkpoint: its ``preprocessing`` field, checked, or for a
    file without one the recipe derived from its ``input_size``, normalization and ``classes``."""
    from toolbox.storage.checkpoint import recorded_normalization

    recorded = checkpoint.get("preprocessing")
    if recorded is not None:
        return check_recipe(recorded, checkpoint, str(path or "The checkpoint"))
    options = checkpoint.get("options") or {}
    size = checkpoint.get("input_size") or [checkpoint["in_chans"], options.get("image_size")]
    if not size[-1]:
        from toolbox.data.datasets import known_shape

        shape = known_shape(str(options.get("dataset")))
        size = [checkpoint["in_chans"], shape[1] if shape else None]
    normalization = recorded_normalization(checkpoint, path)
    if not size[-1] or normalization is None:
        what = "image size" if not size[-1] else "normalization (mean/std)"
        raise CheckpointError(f"{path or 'The checkpoint'} records no {what}, so its preprocessing is unknown; "
                              "use a serve file (RUN/serve/step{k}.pt) or a checkpoint from a run directory.")
    return make_recipe(channels=checkpoint["in_chans"], image_size=int(size[-1]), mean=normalization[0],
                       std=normalization[1], classes=checkpoint.get("classes"), num_classes=checkpoint["num_classes"],
                       dataset=options.get("dataset"))


def check_recipe(recipe: Any, checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """``recipe`` if the fields the predictor reads fit the checkpoint's model, else one sentence."""
    channels = checkpoint["in_chans"]

    def floats(value: Any) -> bool:
        return (isinstance(value, list) and len(value) == channels
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))

    problem = None
    if not isinstance(recipe, dict):
        problem = "is not a mapping"
    elif recipe.get("channels") != channels:
        problem = f"channels {recipe.get('channels')!r} are not the model's {channels}"
    elif not (isinstance(recipe.get("image_size"), int) and 1 <= recipe["image_size"] <= 65536):
        problem = f"image_size {recipe.get('image_size')!r} is not a positive integer"
    elif recipe.get("geometry") != GEOMETRY:
        problem = f"geometry {recipe.get('geometry')!r} is not {GEOMETRY!r}"
    elif not (floats(recipe.get("mean")) and floats(recipe.get("std")) and min(recipe["std"]) > 0):
        problem = "mean/std are not one number per channel (std positive)"
    elif not (isinstance(recipe.get("classes"), list) and len(recipe["classes"]) == checkpoint["num_classes"]
              and all(isinstance(c, str) for c in recipe["classes"])):
        problem = f"classes are not {checkpoint['num_classes']} names"
    if problem:
        raise CheckpointError(f"{source} is not a valid toolbox checkpoint: its preprocessing {problem}; "
                              "use a file written by toolbox.")
    return recipe
