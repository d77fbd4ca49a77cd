"""The run directory: its marker, its first files, its checkpoints, its metric lines, its disk space.

A folder is a run directory only when the toolbox created it: ``RUN_DIR/.toolbox-run`` marks it
(with its format). ``--out`` into an existing folder with files but no marker is refused, so a
user's folder is never written over, and cleanup (temp files of interrupted writes) happens only
in marked folders and touches only the toolbox's own temp files.

``RUN_DIR/config.yaml`` (every option), ``shards.json`` (the images of every step),
``metrics.jsonl`` (one line per epoch and per evaluation), ``checkpoints/step{k}_{phase}.pt``
after every phase and ``checkpoints/partial.pt`` during one, ``results.json``/``results.md`` and
plots, ``data.json`` (class names, normalization, skipped images), ``manifests.json`` (``--shards``
runs: every image of the test folder and of each step's folder, with its content hash),
``serve/step{k}.pt``; also
``run.log`` and TensorBoard's ``tb/`` (:mod:`toolbox.run.logs`). In a multi-process run only
rank 0 calls these.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from toolbox.data import ImageData
from toolbox.data.manifest import RunManifests
from toolbox.errors import UsageError
from toolbox.options import RunOptions, read_mapping
from toolbox.storage import checkpoint as ckpt
from toolbox.storage.atomic import append_line, atomic_write_json, atomic_write_text

MANIFESTS = "manifests.json"

log = logging.getLogger("toolbox")
RUN_MARKER = ".toolbox-run"
MARKER_FORMAT = "toolbox-run/1"
#: What a toolbox run directory of 0.2 (before the marker) always holds.
LEGACY_RUN_FILES = ("config.yaml", "shards.json", "data.json", "metrics.jsonl")
#: Files the toolbox may leave in a new folder before its marker (the run's lock).
BEFORE_MARKER = {"run.lock"}


def absolute_path(path: str | Path) -> str:
    """``path`` made absolute and normalized (``~`` expanded, ``..`` folded; symlinks kept)."""
    return os.path.abspath(Path(path).expanduser())


def absolute_paths(options: RunOptions) -> None:
    """Make the run's data folders and run directory absolute, as config.yaml records them, so a
    later command run from another directory (``toolbox step`` from cron) finds them."""
    options.data_root, options.train, options.test, options.val, options.out = (
        None if p is None else absolute_path(p)
        for p in (options.data_root, options.train, options.test, options.val, options.out))
    options.shards = [absolute_path(p) for p in options.shards]
    options.models_from = [absolute_path(p) if p.endswith(".py") or "/" in p else p for p in options.models_from]


def is_marked(folder: Path) -> bool:
    """Whether the toolbox created ``folder`` (a run or an experiment directory)."""
    return (Path(folder) / RUN_MARKER).is_file()


def mark(folder: Path, kind: str = "run") -> None:
    """Write the marker that makes ``folder`` the toolbox's (``kind``: run or experiment)."""
    import toolbox

    atomic_write_json(Path(folder) / RUN_MARKER, {"format": MARKER_FORMAT, "kind": kind,
                                                  "toolbox": toolbox.__version__})


def check_new_out(folder: Path) -> None:
    """Refuse ``--out`` that names a file, or a folder holding files that the toolbox did not put
    there (an existing run directory is the caller's to judge)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; pass a folder for the run.")
    if folder.is_dir() and not is_marked(folder) and any(p.name not in BEFORE_MARKER for p in folder.iterdir()):
        raise UsageError(f"--out {folder} already holds files and is not a toolbox run directory; nothing was "
                         "written: pass a new or empty folder as --out.")


def check_run_directory(folder: Path, legacy: tuple[str, ...] = LEGACY_RUN_FILES, kind: str = "run") -> None:
    """Refuse to resume or extend a folder the toolbox did not create; a directory of toolbox 0.2
    (no marker, but every file of ``legacy``, which such a run or experiment writes) is marked and
    accepted."""
    folder = Path(folder)
    if is_marked(folder):
        return
    if not all((folder / name).is_file() for name in legacy):
        raise UsageError(f"{folder} is not a toolbox {kind} directory (it has no {RUN_MARKER}); pass the --out "
                         "folder of a `toolbox run`.")
    mark(folder, kind)
    log.info("Marked %s as a toolbox %s directory (written by toolbox 0.2).", folder, kind)


def write_first_files(run_dir: Path, options: RunOptions, shards: list[torch.Tensor],
                      validation: torch.Tensor | None, data: ImageData,
                      arrivals: dict[str, Any] | None = None) -> None:
    """Create the run directory and write config.yaml, shards.json, data.json (class names,
    normalization, images left out by ``--skip-bad-images``), manifests.json when the data has
    manifests, and an empty metrics.jsonl. ``arrivals`` (the split and each step's class counts)
    go into shards.json."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"Cannot write the run directory {run_dir} ({exc.strerror}); pass a writable --out.") from None
    mark(run_dir)
    write_config(run_dir, options)
    atomic_write_json(run_dir / "shards.json",
                      {"seed": options.seed, "per_class": options.per_class,
                       "shards": [s.tolist() for s in shards],
                       "validation": None if validation is None else validation.tolist(),
                       **(arrivals or {})})
    record = {"dataset": data.name, "source": data.source, "classes": data.classes, "mean": list(data.mean),
              "std": list(data.std), "skipped_images": list(data.skipped)}
    if data.skipped_by_folder is not None:  # a resumed run decoded only its test folder: keep the steps' lists
        earlier = _data_record(run_dir).get("skipped_by_folder") if data.manifests is None else None
        record.update(_with_folders(record, {**(earlier if isinstance(earlier, dict) else {}),
                                             **data.skipped_by_folder}))
    atomic_write_json(run_dir / "data.json", record)
    if data.manifests is not None:
        write_manifests(run_dir, data.manifests)
    atomic_write_text(run_dir / "metrics.jsonl", "")


def record_skipped(run_dir: Path, folder: str, images: list[str]) -> None:
    """Record in data.json the images ``--skip-bad-images`` left out of ``folder`` (``"step K"``:
    a step folder ``toolbox step`` added)."""
    record = _data_record(run_dir)
    earlier = record.get("skipped_by_folder")
    by_folder = dict(earlier) if isinstance(earlier, dict) else {"test": list(record.get("skipped_images") or [])}
    atomic_write_json(run_dir / "data.json", {**record, **_with_folders(record, {**by_folder, folder: images})})


def _with_folders(record: dict[str, Any], by_folder: dict[str, list[str]]) -> dict[str, Any]:
    """data.json's ``skipped_by_folder`` and, every folder's lists together, ``skipped_images``."""
    return {"skipped_images": [image for images in by_folder.values() for image in images],
            "skipped_by_folder": by_folder}


def _data_record(run_dir: Path) -> dict[str, Any]:
    """The run's data.json (empty when missing or unreadable)."""
    try:
        record = json.loads((Path(run_dir) / "data.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_config(run_dir: Path, options: RunOptions) -> None:
    """``config.yaml``: every option of the run (rewritten when ``--resume`` changes some)."""
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(options.to_dict(), sort_keys=False))


def write_manifests(run_dir: Path, manifests: RunManifests) -> None:
    """``manifests.json``: the images of the run's test folder and step folders."""
    atomic_write_text(run_dir / MANIFESTS, json.dumps(manifests.to_dict()) + "\n")  # compact: one row a file


def read_manifests(run_dir: Path) -> RunManifests | None:
    """The run's manifests, ``None`` for a run without (started before they were kept); a damaged
    file is one sentence."""
    path = Path(run_dir) / MANIFESTS
    if not path.is_file():
        return None
    try:
        return RunManifests.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is damaged; restore it, or delete it to check new folders only against the "
                         "step folders that still exist.") from None


def append_metrics(run_dir: Path, line: str) -> None:
    """Append one line to metrics.jsonl (one write; a torn line is dropped on resume)."""
    append_line(run_dir / "metrics.jsonl", line)


def holds_run(run_dir: Path, phases: tuple[str, ...] | list[str]) -> bool:
    """Whether ``run_dir`` already holds a run's checkpoints."""
    return (ckpt.partial_checkpoint_path(run_dir).exists()
            or any(ckpt.phase_checkpoint_path(run_dir, 1, p).exists() for p in phases))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The options in ``run_dir/config.yaml``; a folder without one is one sentence."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise UsageError(f"{run_dir} has no config.yaml, so it is not a run directory; pass the --out of an earlier run.")
    return read_mapping(config)


def save_phase(run_dir: Path, step: int, phase: str, data: dict[str, Any], results: dict[str, Any]) -> None:
    """The checkpoint at the end of a phase, then results.json; drop ``partial.pt``."""
    ckpt.save_checkpoint(ckpt.phase_checkpoint_path(run_dir, step, phase), data)
    atomic_write_json(run_dir / "results.json", results)
    ckpt.partial_checkpoint_path(run_dir).unlink(missing_ok=True)


def estimate_checkpoint_bytes(model: nn.Module, options: RunOptions, phases: int) -> int:
    """Disk a run's checkpoints need: one per phase (weights, optimizer state when kept), plus
    ``partial.pt`` with the optimizer and a temp copy of the largest file during a write."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    per_phase = weights * (1 if options.reset_optimizer else 2)
    return phases * per_phase + 2 * (2 * weights) + (1 << 20)


def check_disk_space(run_dir: Path, model: nn.Module, options: RunOptions, phases: int) -> None:
    """Warn when the run directory's disk has less free space than the run's checkpoints need."""
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return
    needed = estimate_checkpoint_bytes(model, options, phases)
    if free < needed:
        log.warning("Only %.0f MB are free on the disk of %s but this run's checkpoints need about %.0f MB; "
                    "free some space or pass another --out.", free / 1e6, run_dir, needed / 1e6)


def default_run_dir(options: RunOptions) -> Path:
    """``runs/<date-time>-<dataset>-<arch>`` under the working directory; for ``--dataset auto`` the
    dataset it resolves to (``fashion_mnist`` or ``synthetic``). Existing runs keep their names."""
    from toolbox.data.auto import auto_name

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    dataset = auto_name(options.data_root) if options.dataset == "auto" else options.dataset
    return Path("runs") / f"{stamp}-{dataset}-{options.arch}"
