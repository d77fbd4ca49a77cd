"""Checkpoints: atomic writes, safe loads, and rebuilding the model they hold.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) saved with
``torch.save`` and loaded with ``weights_only=True``: no pickled modules or classes, so loading a
file never runs code from it. It records what is needed to rebuild the model through timm's
registry and to resume the run.

Every file a run writes goes through :func:`atomic_write_bytes` (temp file in the same folder,
fsync, rename, fsync of the folder): a kill or a full disk leaves either the old file or the new
one, never a torn one, and a failed write removes its temp file and raises :class:`WriteError`
with one sentence. ``metrics.jsonl`` is the one append-only file; a torn last line is dropped on
resume (``toolbox.run``).

Test hook: :func:`kill_point` SIGKILLs the process at a named moment when the environment
variable ``TOOLBOX_TEST_KILL_AT`` names it (``before-rename:<file name>``,
``after-write:<file name>``, ``batch:<step>:<phase>:<epoch>:<batch>``); the kill-and-resume tests
use it to stop a run at exact points. In a multi-process (torchrun) run ``TOOLBOX_TEST_KILL_RANK``
names the one rank that kills itself (default: every rank that reaches the event; only rank 0
writes files). Unset, it costs one dictionary lookup per file written.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pickle
import signal
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import toolbox
from toolbox import distributed
from toolbox.errors import CheckpointError, UsageError

FORMAT = "toolbox-checkpoint/1"
KILL_ENV = "TOOLBOX_TEST_KILL_AT"
KILL_RANK_ENV = "TOOLBOX_TEST_KILL_RANK"
PARTIAL_NAME = "partial.pt"
TEMP_SUFFIX = ".tmp"
log = logging.getLogger("toolbox")


def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp alone would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


class WriteError(OSError):
    """A file of the run could not be written (full disk, permissions); one sentence, old file intact."""


def kill_point(event: str) -> None:
    """Test hook: SIGKILL this process when ``$TOOLBOX_TEST_KILL_AT`` equals ``event``.

    Lets tests kill a run at an exact moment (between writing a temp file and renaming it, at a
    given batch) and check that ``--resume`` loses nothing. Does nothing when the variable is unset.
    With ``$TOOLBOX_TEST_KILL_RANK`` set, only the process whose ``$RANK`` (torchrun) equals it dies.
    """
    if os.environ.get(KILL_ENV) == event:
        target = os.environ.get(KILL_RANK_ENV)
        if target is None or target == os.environ.get("RANK", "0"):
            os.kill(os.getpid(), signal.SIGKILL)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[: 1 << 24])
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(path: Path, exc: OSError) -> WriteError:
    """The one-sentence :class:`WriteError` for a failed write of ``path``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = ("free some disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "check the folder's permissions and free space")
    error = WriteError(f"Could not write {path} ({reason}); what was written before is intact: "
                       f"{hint}, then continue the run with `toolbox run --resume <run dir>`.")
    error.errno = exc.errno
    return error


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill leaves either the old file or the new one.

    The bytes go to a temp file beside ``path`` (``.<name>.<random>.tmp``), are fsynced, and the
    temp file is renamed over ``path``. A failure (e.g. ENOSPC) removes the temp file and raises
    :class:`WriteError` (an ``OSError``) naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            with contextlib.suppress(OSError):
                os.fchmod(fd, FILE_MODE)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        kill_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise write_error(path, exc) from None
        raise
    _fsync_dir(path.parent)
    kill_point(f"after-write:{path.name}")


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` with one ``O_APPEND`` write.

    A kill can at worst leave a torn last line, which the reader drops (``metrics.jsonl`` on
    resume); a failure (e.g. ENOSPC) raises :class:`WriteError`.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            _write_all(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files a killed :func:`atomic_write_bytes` left in ``folder``; return them."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_savefig(fig: Any, path: Path, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (rendered in memory, then :func:`atomic_write_bytes`)."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic write of a text file (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomic write of a JSON file."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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


def build_model(arch: str, num_classes: int, in_chans: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Create ``arch`` through timm's registry (CIFAR backbones are registered by toolbox)."""
    if not timm.is_model(arch):
        raise UsageError(f"Unknown --arch {arch!r}; `toolbox models list` shows the CIFAR backbones "
                         "and `toolbox models list '*'` every timm model.")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 **(model_kwargs or {}))
    except (TypeError, ValueError, AttributeError, KeyError, AssertionError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:150]
        raise UsageError(f"model_kwargs {model_kwargs!r} do not fit {arch} ({detail}); fix model_kwargs.") from None


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
    ``ctx.records["structure"]``; :func:`toolbox.compact.apply_structure` replays it, so a compact
    model rebuilds from its timm name plus that record, with no pickled modules.
    """
    structure = (checkpoint.get("records") or {}).get(STRUCTURE_RECORD)
    if not structure:
        return model
    from toolbox.compact import apply_structure

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
    model = model_from_checkpoint(data)
    for param in model.parameters():
        param.requires_grad_(False)
    return model
