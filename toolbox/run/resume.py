"""Continuing a killed run: the last complete phase, the unfinished phase's epochs, the RNG.

A run directory holds a checkpoint after every phase (``checkpoints/step{k}_{phase}.pt``) and,
while a phase trains, ``checkpoints/partial.pt`` after every epoch but the last.
:func:`restore` finds the newest readable phase checkpoint and, when it continues the very next
phase, the partial one (the run loads them); metric lines of work that will be trained again are dropped, so the
resumed run's files equal an uninterrupted run's. Every random draw of a phase comes from
generators seeded by (seed, step, phase) and the global RNG state is saved with each epoch, so a
resumed run trains exactly as an uninterrupted one would on the same machine.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from toolbox.errors import CheckpointError, UsageError
from toolbox.options import CORE_FIELDS, PluginOption, RunOptions, build_options, normalize_key
from toolbox.plugin_host.calls import load_plugin_states
from toolbox.run.directory import absolute_path
from toolbox.run.state import RunState
from toolbox.runtime import distributed
from toolbox.storage import checkpoint as ckpt
from toolbox.storage.atomic import atomic_write_text, remove_temp_files

if TYPE_CHECKING:
    import pluggy

    from toolbox.context import Context

log = logging.getLogger("toolbox")
#: Core options ``--resume`` may change: they decide how the remaining phases train, not the data,
#: the model or the random draws of what is already trained.
RESUMABLE = frozenset({"lr", "batch_size", "eval_batch_size", "epochs", "phase_epochs", "momentum", "weight_decay",
                       "schedule", "milestones", "lr_decay", "warmup_epochs", "warmup_lr", "device", "channels_last",
                       "precision", "threads", "skip_nonfinite", "tensorboard", "compact_teacher",
                       "promote", "val"})


def resumed_options(values: dict[str, Any], changes: dict[str, Any],
                    declared: dict[str, PluginOption]) -> tuple[RunOptions, bool]:
    """The options of the run recorded in ``values`` (its config.yaml) with ``changes`` (flags
    given with ``--resume``) applied: core options of :data:`RESUMABLE` and the enabled plugins'
    options, each logged as "continuing with --lr 0.001 (was 1e+06)"; a different value of any
    other core option is refused with one sentence. Returns the options and whether any changed."""
    changes = {normalize_key(key): value for key, value in changes.items() if value is not None}
    recorded = build_options(dict(values), declared)
    nested = {**(values.get("plugin") or {}), **{k: v for k, v in changes.items() if k not in CORE_FIELDS}}
    options = build_options({**values, **{k: v for k, v in changes.items() if k in CORE_FIELDS}, "plugin": nested},
                            declared)
    old, new = recorded.to_dict(), options.to_dict()
    changed = [key for key in CORE_FIELDS if key != "plugin" and old[key] != new[key]]
    for key in changed:
        flag = "--" + key.replace("_", "-")
        if key == "test":  # the same test set in another place (a moved folder)
            new["test"] = options.test = absolute_path(options.test)
            log.info("the test folder is now %s (was %s)", options.test, old["test"])
            continue
        if key == "out":
            raise UsageError(f"{flag} has no meaning with --resume: the run stays in {old['out']}; drop {flag}.")
        if key not in RESUMABLE:
            raise UsageError(f"{flag} cannot change when a run resumes (recorded {old[key]!r}, given {new[key]!r}): "
                             "it decides the data, the model or the random draws of the phases already trained; "
                             "start a new run with another --out instead.")
        log.info("continuing with %s %s (was %s)", flag, new[key], old[key])
    for key in sorted(new["plugin"]):
        if old["plugin"].get(key) != new["plugin"][key]:
            log.info("continuing with --%s %s (was %s)", key.replace("_", "-"), new["plugin"][key],
                     old["plugin"].get(key))
    return options, old != new


def rng_state() -> dict[str, Any]:
    """The global torch RNG state (CPU, and every CUDA device once CUDA is in use)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": list(cuda)}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only where the same number of devices is present)."""
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class Restored:
    """What a run directory holds to continue from (:func:`restore`)."""

    checkpoint: dict[str, Any] | None = None  # the newest readable phase checkpoint
    source: str = ""  # where it was read from, for messages
    state: RunState = field(default_factory=RunState)  # the run's state at that checkpoint
    last: tuple[int, str] | None = None  # its (step, phase)
    partial: dict[str, Any] | None = None  # partial.pt when it continues the next phase

    @property
    def where(self) -> str | None:
        """Where the run continues, in words (``None``: from the very beginning)."""
        if self.partial is not None:
            return (f"step {self.partial['step']} {self.partial['phase']}, epoch "
                    f"{self.partial['epochs_done'] + 1} of {self.partial['epochs']}")
        return None if self.last is None else f"after step {self.last[0]} {self.last[1]}"


def restore(run_dir: Path, order: list[tuple[int, str]], epochs_for: Callable[[str], int]) -> Restored:
    """The last complete phase's checkpoint of ``run_dir`` (``order``: the run's (step, phase)s)
    and, when it belongs to the next phase, ``partial.pt``; temp files of interrupted writes are
    removed and metric lines of work that will be trained again dropped."""
    distributed.run_on_main(_remove_temp_files, run_dir)
    restored = _restore_complete(run_dir, order)
    restored.partial = _find_partial(run_dir, order, restored.state.done, epochs_for)
    distributed.run_on_main(trim_metrics, run_dir / "metrics.jsonl", restored.state.done, restored.partial)
    return restored


def _remove_temp_files(run_dir: Path) -> None:
    """Delete the temp files of writes that a kill interrupted."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in remove_temp_files(folder):
            log.info("Removed %s, the temp file of a write that a kill interrupted.", tmp)


def read_checkpoint(path: Path) -> dict[str, Any] | CheckpointError | None:
    """The checkpoint at ``path`` (rank 0 reads it, every process gets it): ``None`` when there
    is none, the :class:`CheckpointError` when it cannot be read."""
    def read() -> dict[str, Any] | CheckpointError | None:
        if not path.exists():
            return None
        try:
            return ckpt.check_phase_checkpoint(ckpt.load_checkpoint(path))
        except CheckpointError as exc:
            return exc

    return distributed.run_on_main(read)


def _restore_complete(run_dir: Path, order: list[tuple[int, str]]) -> Restored:
    """The newest readable phase checkpoint (a truncated one is skipped with a warning)."""
    for step, phase in reversed(order):
        path = ckpt.phase_checkpoint_path(run_dir, step, phase)
        data = read_checkpoint(path)
        if data is None:
            continue
        if isinstance(data, CheckpointError):
            log.warning("Ignoring checkpoint %s: %s", path, data)
            continue
        state = RunState(results=data["results"], masks=data["masks"], records=data["records"],
                         optimizer_state=data.get("optimizer"), done={(int(s), str(p)) for s, p in data["done"]})
        return Restored(checkpoint=data, source=f"checkpoint {path}", state=state, last=(step, phase))
    return Restored()


def _find_partial(run_dir: Path, order: list[tuple[int, str]], done: set[tuple[int, str]],
                  epochs_for: Callable[[str], int]) -> dict[str, Any] | None:
    """``partial.pt`` when it continues the phase right after the restored one; else ``None``
    (a truncated, stale or foreign one is ignored with a warning)."""
    path = ckpt.partial_checkpoint_path(run_dir)
    data = read_checkpoint(path)
    if data is None:
        return None
    if isinstance(data, CheckpointError):
        log.warning("Ignoring the unfinished phase's checkpoint %s: %s", path, data)
        return None
    key = (int(data.get("step", 0)), str(data.get("phase")))
    if key in done:
        distributed.run_on_main(path.unlink, missing_ok=True)  # its phase completed after it was written
        return None
    pending = [item for item in order if item not in done]
    done_then = {(int(s), str(p)) for s, p in data.get("done", [])}
    epochs_done = int(data.get("epochs_done", 0))
    if (not data.get("partial") or not pending or key != pending[0] or done_then != done
            or not 0 < epochs_done < epochs_for(key[1])):
        log.warning("Ignoring %s: it does not continue the phase after the last complete checkpoint; "
                    "that phase restarts from its beginning.", path)
        return None
    data["path"] = str(path)
    return data


def trim_metrics(path: Path, done: set[tuple[int, str]], partial: dict[str, Any] | None) -> None:
    """Keep the metric lines of complete phases and of the partial phase's saved epochs; drop
    the rest (they will be trained again) and torn lines (a kill during an append), with a warning."""
    if not path.exists():
        return
    unfinished = None if partial is None else (int(partial["step"]), str(partial["phase"]))
    epochs = 0 if partial is None else int(partial["epochs_done"])
    kept, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if not isinstance(item, dict):
            torn += 1
            continue
        key = (item.get("step"), item.get("phase"))
        if key in done or (key == unfinished and "epoch" in item and item["epoch"] <= epochs):
            kept.append(line)
    if torn:
        log.warning("Dropped %d torn line(s) of %s (written when the run was killed).", torn, path)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def continue_phase(ctx: Context, partial: dict[str, Any], optimizer: torch.optim.Optimizer,
                   pm: pluggy.PluginManager) -> torch.optim.Optimizer:
    """A phase from ``partial.pt`` whose model ``ctx.model`` already holds the saved weights (no
    model surgery: the saved model already had it): masks, records, ``optimizer``'s state, the
    plugins' states and the torch RNG as the last epoch left them."""
    ctx.masks, ctx.records = dict(partial["masks"]), dict(partial["records"])
    ctx.phase_metrics = dict(partial.get("phase_metrics") or {})
    ctx.global_batch = int(partial.get("global_batch", 0))
    ctx.epoch = ctx.start_epoch
    optimizer.load_state_dict(partial["optimizer"])
    ctx.optimizer = optimizer
    load_plugin_states(pm, ctx, partial.get("plugins") or {})
    set_rng_state(partial["rng"])
    log.info("Continuing step %d %s at epoch %d of %d from %s.", ctx.step, ctx.phase, ctx.start_epoch + 1,
             ctx.epochs, partial["path"])
    return optimizer


def same_shapes(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same keys with the same shapes (else a pruner changed the model)."""
    return saved.keys() == current.keys() and all(saved[k].shape == current[k].shape for k in saved)
