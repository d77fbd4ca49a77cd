"""Checkpoints: safe saves and loads, and rebuilding the model they hold.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) saved with
``torch.save`` and loaded with ``weights_only=True``: no pickled modules or classes, so loading a
file never runs code from it. It records what is needed to rebuild the model through timm's
registry and to resume the run. Files are written atomically (:mod:`toolbox.storage.atomic`).
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

import toolbox
from toolbox.errors import CheckpointError
from toolbox.models import build_model
from toolbox.models.modules import freeze
from toolbox.runtime import distributed
from toolbox.storage.atomic import atomic_write_bytes
from toolbox.storage.structure import apply_structure

FORMAT = "toolbox-checkpoint/1"
PARTIAL_NAME = "partial.pt"
log = logging.getLogger("toolbox")


def make_checkpoint(model: nn.Module, *, arch: str, num_classes: int, in_chans: int,
                    model_kwargs: dict[str, Any], step: int, phase: str,
                    masks: dict[str, torch.Tensor], records: dict[str, Any],
                    options: dict[str, Any], results: list[dict[str, Any]],
                    optimizer: dict[str, Any] | None = None,
                    input_size: tuple[int, int, int] | None = None,
                    classes: list[str] | None = None) -> dict[str, Any]:
    """The checkpoint dict of ``model`` at the end of ``phase`` of ``step`` (``classes``: the
    class names in label order, where the dataset has them)."""
    return {
        "format": FORMAT,
        "version": toolbox.__version__,
        "arch": arch,
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "input_size": list(input_size) if input_size else None,
        "classes": list(classes) if classes else None,
        "model_kwargs": dict(model_kwargs),
        "step": int(step),
        "phase": phase,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": {k: v.detach().cpu() for k, v in masks.items()},
        "records": records,
        "options": options,
        "results": results,
        "optimizer": optimizer,
    }


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Save ``checkpoint`` atomically (temp file, fsync, rename)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``).

    Raises :class:`CheckpointError` with one sentence when the file is missing, truncated, not a
    toolbox checkpoint, or holds pickled objects that could run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist; pass the path of a .pt file from a run directory.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        blocked = next((line for line in lines if "GLOBAL" in line), None)
        if blocked is not None:
            raise CheckpointError(
                f"Refusing to load {path}: it holds objects that weights_only loading does not allow "
                f"({blocked[:120]}); only load checkpoints written by toolbox."
            ) from None
        detail = next((line for line in lines if line.startswith("Unsupported")), "not a checkpoint")
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt ({detail[:100]}); "
                              "use an earlier checkpoint.") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse the bytes means a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt ({first}); "
                              "use an earlier checkpoint.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a toolbox checkpoint; pass a file written by toolbox run/train/prune.")
    return data


def load_state(model: nn.Module, checkpoint: dict[str, Any], arch: str, num_classes: int,
               source: str = "checkpoint", in_chans: int | None = None) -> None:
    """Load the checkpoint's weights into ``model``; a mismatch is one sentence naming both.

    ``in_chans`` (when given) is checked too, so a 1-channel checkpoint meeting a 3-channel
    dataset is named as such rather than as a shape error.
    """
    if checkpoint["arch"] != arch or checkpoint["num_classes"] != num_classes:
        raise CheckpointError(
            f"The {source} is for {checkpoint['arch']} with {checkpoint['num_classes']} classes but this run "
            f"uses {arch} with {num_classes} classes; pass a matching --arch/--dataset or another checkpoint."
        )
    recorded = checkpoint.get("in_chans")
    if in_chans is not None and recorded is not None and int(recorded) != int(in_chans):
        raise CheckpointError(
            f"The {source} is for {recorded}-channel images but this run's dataset has {in_chans} channels; "
            "pass the dataset it was trained on or another checkpoint."
        )
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"The {source}'s weights do not fit {arch} ({str(exc).splitlines()[0][:120]}); "
            "was it made with other model options?"
        ) from None


STRUCTURE_RECORD = "structure"


def apply_recorded_structure(model: nn.Module, checkpoint: dict[str, Any]) -> nn.Module:
    """Apply the structural changes a checkpoint records (e.g. removed channels) to a fresh model.

    A plugin that changes the architecture stores a plain-data description of the change in
    ``ctx.records["structure"]``; :func:`toolbox.storage.structure.apply_structure` replays it, so a compact
    model rebuilds from its timm name plus that record, with no pickled modules.
    """
    structure = (checkpoint.get("records") or {}).get(STRUCTURE_RECORD)
    if not structure:
        return model
    return apply_structure(model, structure)


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint holds, with its weights, in eval mode."""
    model = build_model(checkpoint["arch"], checkpoint["num_classes"], checkpoint["in_chans"],
                        checkpoint.get("model_kwargs"))
    model = apply_recorded_structure(model, checkpoint)
    load_state(model, checkpoint, checkpoint["arch"], checkpoint["num_classes"])
    return model.eval()


def phase_checkpoint_path(run_dir: Path, step: int, phase: str) -> Path:
    """Where the checkpoint at the end of ``phase`` of ``step`` lives."""
    return Path(run_dir) / "checkpoints" / f"step{step}_{phase}.pt"


def partial_checkpoint_path(run_dir: Path) -> Path:
    """Where the checkpoint of an unfinished phase lives (written after every epoch but the last)."""
    return Path(run_dir) / "checkpoints" / PARTIAL_NAME


def load_phase_model(run_dir: Path, step: int, phase: str) -> nn.Module:
    """The model saved at the end of ``phase`` of ``step`` in ``run_dir`` (frozen, eval mode).

    In a multi-process run rank 0 reads the file and every process gets its contents (call it on
    every process).
    """
    data = distributed.run_on_main(load_checkpoint, phase_checkpoint_path(run_dir, step, phase))
    return freeze(model_from_checkpoint(data))
