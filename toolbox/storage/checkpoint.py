"""Checkpoints: safe saves and loads, and rebuilding the model they hold.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) saved with
``torch.save`` and loaded with ``weights_only=True``: no pickled modules or classes, so loading a
file never runs code from it. It records what is needed to rebuild the model through timm's
registry and to resume the run. Files are written atomically (:mod:`toolbox.storage.atomic`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

import toolbox
from toolbox.errors import CheckpointError, UsageError
from toolbox.models import build_model, check_model_kwargs
from toolbox.models.modules import freeze
from toolbox.runtime import distributed
from toolbox.storage.atomic import atomic_write_bytes
from toolbox.storage.structure import apply_structure, check_structure

FORMAT = "toolbox-checkpoint/1"
PARTIAL_NAME = "partial.pt"
log = logging.getLogger("toolbox")


def make_checkpoint(model: nn.Module, *, arch: str, num_classes: int, in_chans: int,
                    model_kwargs: dict[str, Any], step: int, phase: str,
                    masks: dict[str, torch.Tensor], records: dict[str, Any],
                    options: dict[str, Any], results: list[dict[str, Any]],
                    optimizer: dict[str, Any] | None = None,
                    input_size: tuple[int, int, int] | None = None,
                    classes: list[str] | None = None,
                    normalization: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of ``model`` at the end of ``phase`` of ``step`` (``classes``: the
    class names in label order, where the dataset has them; ``normalization``: the (mean, std)
    the model was trained with, recorded as ``normalization``)."""
    data = {
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
    if normalization is not None:
        data["normalization"] = {"mean": [float(v) for v in normalization[0]],
                                 "std": [float(v) for v in normalization[1]]}
    return data


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
        blocked = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if blocked is not None:
            raise CheckpointError(
                f"Refusing to load {path}: it holds a pickled {blocked.group(1)[:80]}, which weights_only loading "
                "does not allow; only load checkpoints written by toolbox."
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
    return validate_checkpoint(data, str(path))


def _refuse(source: str, field: str, problem: str) -> CheckpointError:
    """The one sentence for a recorded field that a toolbox checkpoint never holds."""
    return CheckpointError(f"{source} is not a valid toolbox checkpoint: its {field} {problem}; "
                           "use a checkpoint written by toolbox.")


def _int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _tensors(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _floats(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


_OPTIONAL = type(None)
#: The recorded run options that are read back (``toolbox eval`` reloads the training data), and their types.
RECORDED_OPTIONS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "data_root": (str, _OPTIONAL), "train": (str, _OPTIONAL), "test": (str, _OPTIONAL),
    "image_size": (int, _OPTIONAL), "channels": (int, _OPTIONAL), "mean": (list, _OPTIONAL), "std": (list, _OPTIONAL),
    "skip_bad_images": (bool,), "allow_overlap": (bool,), "steps": (int,), "per_class": (int, _OPTIONAL),
    "val_per_class": (int,), "seed": (int,), "shards": (list,), "classes": (list, _OPTIONAL)}


def _bad_option(options: dict[str, Any]) -> str | None:
    """The first recorded option of :data:`RECORDED_OPTIONS` whose value has another type, as "name value"."""
    for name, kinds in RECORDED_OPTIONS.items():
        value = options.get(name)
        if name not in options or value is None and _OPTIONAL in kinds:
            continue
        plain = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if not plain or (name in ("mean", "std") and not _floats(value, len(value))):
            return f"{name} {repr(value)[:40]}"
    return None


def validate_checkpoint(data: dict[str, Any], source: str = "The checkpoint") -> dict[str, Any]:
    """``data`` if every field toolbox reads has the type and range toolbox writes; else one sentence.

    Checked: ``arch``, ``num_classes``, ``in_chans``, ``model_kwargs`` (the allow-list of
    :func:`toolbox.models.check_model_kwargs`), ``state_dict``, ``masks``, ``records`` (and its
    structure record), ``step``, ``phase``, ``options`` (the types of
    :data:`RECORDED_OPTIONS`), ``results``, ``input_size``, ``classes``,
    ``normalization``, ``optimizer``.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a toolbox checkpoint; pass a file written by toolbox run/train/prune.")
    arch = data.get("arch")
    if not isinstance(arch, str) or not 0 < len(arch) <= 100 or not arch.replace("_", "").replace(".", "").isalnum():
        raise _refuse(source, "arch", f"{repr(arch)[:40]} is not a timm model name")
    if not _int(data.get("num_classes"), 1, 1_000_000):
        raise _refuse(source, "num_classes", f"{repr(data.get('num_classes'))[:40]} is not a positive integer")
    if not _int(data.get("in_chans"), 1, 1024):
        raise _refuse(source, "in_chans", f"{repr(data.get('in_chans'))[:40]} is not a channel count")
    try:
        check_model_kwargs(data.get("model_kwargs"), "recorded model_kwargs")
    except UsageError as exc:
        raise CheckpointError(f"{source} is not a valid toolbox checkpoint: its {str(exc).rsplit('; ', 1)[0]}; "
                              "use a checkpoint written by toolbox.") from None
    if not _tensors(data.get("state_dict")):
        raise _refuse(source, "state_dict", "is not a mapping of names to tensors")
    if not _tensors(data.get("masks", {})):
        raise _refuse(source, "masks", "are not a mapping of names to tensors")
    records = data.get("records", {})
    if not isinstance(records, dict):
        raise _refuse(source, "records", "are not a mapping")
    if records.get(STRUCTURE_RECORD):
        try:
            check_structure(records[STRUCTURE_RECORD])
        except CheckpointError as exc:
            problem = str(exc).removeprefix("The checkpoint's structure record ").rsplit("; ", 1)[0]
            raise _refuse(source, "structure record", problem) from None
    if not _int(data.get("step", 0), 0, 1_000_000) or not isinstance(data.get("phase", ""), str):
        raise _refuse(source, "step/phase", "is not a step number and phase name")
    for field, kind in (("options", dict), ("results", list), ("optimizer", dict)):
        if data.get(field) is not None and not isinstance(data[field], kind):
            raise _refuse(source, field, f"is not a {kind.__name__}")
    bad = _bad_option(data.get("options") or {})
    if bad is not None:
        raise _refuse(source, "recorded option", f"{bad} is not of the type toolbox records")
    size = data.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 3 and all(_int(v, 1, 65536) for v in size)):
        raise _refuse(source, "input_size", "is not three positive integers")
    classes = data.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise _refuse(source, "classes", "are not a list of names")
    norm = data.get("normalization")
    if norm is not None and not (isinstance(norm, dict) and _floats(norm.get("mean"), data["in_chans"])
                                 and _floats(norm.get("std"), data["in_chans"]) and min(norm["std"]) > 0):
        raise _refuse(source, "normalization", "is not a per-channel mean and positive std")
    return data


def check_phase_checkpoint(data: dict[str, Any], source: str = "The checkpoint") -> dict[str, Any]:
    """``data`` if it holds what resuming a run reads (``done``; for ``partial.pt`` also the epoch
    counts and RNG state), else a :class:`CheckpointError`: e.g. ``toolbox prune`` output or a
    serve file copied into ``checkpoints/`` is not a phase checkpoint."""
    done = data.get("done")
    if not (isinstance(done, list) and all(isinstance(d, list) and len(d) == 2 and _int(d[0], 0, 1_000_000)
                                           and isinstance(d[1], str) for d in done)):
        raise CheckpointError(f"{source} is not a run's phase checkpoint (it records no completed phases, as "
                              "`toolbox prune` output does); keep such files outside checkpoints/.")
    if not isinstance(data.get("results"), list):
        raise _refuse(source, "results", "are not a list")
    if data.get("partial"):
        rng = data.get("rng")
        if not (_int(data.get("epochs_done"), 0, 1_000_000) and _int(data.get("epochs"), 1, 1_000_000)
                and isinstance(rng, dict) and isinstance(rng.get("cpu"), torch.Tensor)
                and isinstance(rng.get("cuda", []), list) and isinstance(data.get("optimizer"), dict)
                and isinstance(data.get("plugins") or {}, dict) and isinstance(data.get("phase_metrics") or {}, dict)
                and _int(data.get("global_batch", 0), 0, 10**12)):
            raise _refuse(source, "unfinished-phase fields", "(epochs, RNG state, optimizer) are missing or malformed")
    return data


def load_state(model: nn.Module, checkpoint: dict[str, Any], arch: str, num_classes: int,
               source: str = "checkpoint", in_chans: int | None = None) -> None:
    """Load the checkpoint's weights into ``model``; a mismatch is one sentence naming both.

    ``in_chans`` (when given) is checked too, so a 1-channel checkpoint meeting a 3-channel
    dataset is named as such rather than as a shape error.
    """
    validate_checkpoint(checkpoint, f"The {source}")
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
    """Rebuild the model a checkpoint holds, with its weights, in eval mode (its fields are
    checked first: :func:`validate_checkpoint`)."""
    validate_checkpoint(checkpoint)
    try:
        model = build_model(checkpoint["arch"], checkpoint["num_classes"], checkpoint["in_chans"],
                            checkpoint.get("model_kwargs"))
    except UsageError as exc:
        raise CheckpointError(f"The checkpoint's model cannot be built: {exc}") from None
    model = apply_recorded_structure(model, checkpoint)
    load_state(model, checkpoint, checkpoint["arch"], checkpoint["num_classes"])
    return model.eval()


def recorded_normalization(checkpoint: dict[str, Any], path: str | Path | None = None
                           ) -> tuple[list[float], list[float]] | None:
    """The (mean, std) the checkpoint's model was trained with: its ``normalization``, else the
    run directory's ``data.json`` (for ``RUN/checkpoints/*.pt``), else the recorded ``--mean/--std``;
    ``None`` when none is recorded."""
    norm = checkpoint.get("normalization")
    if norm:
        return list(norm["mean"]), list(norm["std"])
    if path is not None and Path(path).parent.name == "checkpoints":
        record = Path(path).parent.parent / "data.json"
        try:
            info = json.loads(record.read_text()) if record.is_file() else {}
        except (OSError, ValueError):
            info = {}
        channels = checkpoint["in_chans"]
        if isinstance(info, dict) and _floats(info.get("mean"), channels) and _floats(info.get("std"), channels) \
                and min(info["std"]) > 0:
            return list(info["mean"]), list(info["std"])
    options = checkpoint.get("options") or {}
    if _floats(options.get("mean"), checkpoint["in_chans"]) and _floats(options.get("std"), checkpoint["in_chans"]):
        return list(options["mean"]), list(options["std"])
    return None


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
