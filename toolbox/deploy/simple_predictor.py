"""A stand-in for the predictor (``toolbox.load_predictor``) until that branch is merged: the
served model with the preprocessing its serve file implies (decode, resize + centre crop/pad,
/255, normalize)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from toolbox.data.image_decode import decode_image
from toolbox.data.pipeline import normalize_batch
from toolbox.pruning.compaction import checkpoint_input_size
from toolbox.storage import checkpoint as ckpt


class SimplePredictor:
    """``model``, ``classes``, ``step`` and ``preprocess(images)`` of one model file."""

    def __init__(self, path: str | Path) -> None:
        data = ckpt.load_checkpoint(path)
        self.model = ckpt.model_from_checkpoint(data)
        self.step = int(data["step"])
        self.classes = list(data.get("classes") or [str(i) for i in range(int(data["num_classes"]))])
        self.channels, self.size, _ = checkpoint_input_size(data, self.model)
        self.mean, self.std = ckpt.recorded_normalization(data) or ([0.0] * self.channels, [1.0] * self.channels)

    def preprocess(self, images: Sequence[bytes]) -> torch.Tensor:
        """A normalized float batch of encoded images (raises what Pillow raises for a bad one)."""
        raw = np.stack([decode_image(io.BytesIO(blob), self.size, self.channels) for blob in images])
        return normalize_batch(torch.from_numpy(raw), self.mean, self.std)
