"""A run: steps (one per data shard) × phases (learn, sparsify, compact), with checkpoints.

The run directory holds ``config.yaml``, ``shards.json``, ``metrics.jsonl``, a checkpoint after
every phase (``checkpoints/step{k}_{phase}.pt``), ``results.json``, ``results.md``, plots,
``run.log`` (:mod:`toolbox.runlog`) and TensorBoard events in ``tb/`` (:mod:`toolbox.tensorboard`).
``resume(run_dir)`` continues from the last complete phase. Every random draw of a phase comes
from generators seeded by (seed, step, phase), so a resumed run trains exactly as an
uninterrupted one would on the same machine.

Under ``torchrun`` every process runs the same :class:`Run` (``toolbox.distributed``): each
trains on its share of every global batch through DistributedDataParallel and evaluates its
share of the test set; rank 0 alone reads and writes the run directory and shares what it read
(:func:`toolbox.distributed.run_on_main`), so the files are those of a single-process run.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pluggy
import torch
import yaml
from torch import nn

from toolbox import checkpoint as ckpt
from toolbox import distributed, report
from toolbox.context import Context
from toolbox.data import (BatchLoader, DatasetNotFoundError, ImageData, load_dataset,
                          split_shards)
from toolbox.engine import (Trainer, build_optimizer, count_macs, count_params, evaluate,
                            select_device)
from toolbox.errors import CheckpointError, UsageError
from toolbox.options import PHASES, RunOptions, build_options
from toolbox.plugins import chain_prune, declared_options, dormant_options, load_plugins
from toolbox.preflight import check_run
from toolbox.run_logs import RunLogs

log = logging.getLogger("toolbox")


def phase_seed(seed: int, step: int, phase: str) -> int:
    """The seed of every random draw in ``phase`` of ``step`` (independent of earlier phases)."""
    return seed * 100_003 + step * 101 + PHASES.index(phase) + 1


def plan_phases(pm: pluggy.PluginManager, step: int, num_steps: int) -> list[str]:
    """``learn`` plus the phases plugins ask for, in canonical order."""
    wanted = {"learn"}
    for extra in pm.hook.toolbox_phases(step=step, num_steps=num_steps):
        for name in extra or []:
            if name not in PHASES:
                raise UsageError(f"A plugin asked for unknown phase {name!r}; phases are {', '.join(PHASES)}.")
            wanted.add(name)
    return [p for p in PHASES if p in wanted]


def default_run_dir(options: RunOptions) -> Path:
    """``runs/<date-time>-<dataset>-<arch>`` under the working directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{options.dataset}-{options.arch}"


def load_run_data(options: RunOptions) -> ImageData:
    """Load the run's dataset; ``auto`` means Fashion-MNIST where present, else synthetic.

    ``options.dataset`` is set to the name actually used, so config.yaml records it.
    """
    try:
        if options.dataset == "auto":
            try:
                data = load_dataset("fashion_mnist", options.data_root, download=False)
            except DatasetNotFoundError as exc:
                log.warning("Fashion-MNIST not found (%s); using the synthetic dataset instead.", exc)
                data = load_dataset("synthetic")
            options.dataset = data.name
            return data
        return load_dataset(options.dataset, options.data_root)
    except DatasetNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def split_validation_and_shards(labels: torch.Tensor, options: RunOptions) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Hold out ``val_per_class`` training images per class (for choosing hyper-parameters), then
    split the rest into the step shards. Both come from the run's seed."""
    if not options.val_per_class:
        return None, split_shards(labels, options.steps, options.seed, options.per_class)
    (validation,) = split_shards(labels, 1, options.seed + 7919, options.val_per_class)
    rest = torch.ones(labels.numel(), dtype=torch.bool)
    rest[validation] = False
    remaining = rest.nonzero().flatten()
    shards = split_shards(labels[remaining], options.steps, options.seed, options.per_class)
    return validation, [remaining[s] for s in shards]


@dataclass
class RunState:
    """What a run carries from phase to phase (and what a checkpoint restores)."""

    results: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    done: set[tuple[int, str]] = field(default_factory=set)


class Run:
    """One multi-step run: owns the model, the data, the plugins and the run directory."""

    def __init__(self, options: RunOptions, pm: pluggy.PluginManager, run_dir: Path,
                 progress: "Callable[..., Any] | None" = None) -> None:
        distributed.init()
        self.options = options
        self.pm = pm
        self.run_dir = Path(run_dir)
        self.progress = progress if distributed.is_main() else None
        self.device = distributed.local_device(select_device(options.device))
        distributed.local_batch_size(options.batch_size)  # refuses a global batch the processes cannot share
        if options.threads:
            torch.set_num_threads(options.threads)
        self.data: ImageData = load_run_data(options)
        try:
            self.validation, self.shards = split_validation_and_shards(self.data.train_y, options)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        torch.manual_seed(options.seed)
        self.model = self._to_device(ckpt.build_model(options.arch, self.data.num_classes,
                                                      self.data.in_chans, options.model_kwargs))
        self.state = RunState()
        self.partial: dict[str, Any] | None = None
        self.initialized = False
        self.logs = RunLogs(self.run_dir, options.tensorboard)  # run.log and tb/ (rank 0)
        self.pm.hook.toolbox_configure(options=options)
        check_run(options.arch, options.model_kwargs, self.data.num_classes, self.data.in_chans,
                  self.data.image_size, options.plugins, float(options.plugin.get("ratio", 0.5)))
        distributed.check_same("options and dataset", {
            **options.to_dict(), "train images": int(self.data.train_y.numel()),
            "test images": int(self.data.test_y.numel()), "classes": self.data.num_classes})

    def initialize_from(self, path: Path) -> None:
        """Start from the weights and masks of a checkpoint (``toolbox train --init``)."""
        data = distributed.run_on_main(ckpt.load_checkpoint, path)
        self.model = self._to_device(ckpt.apply_recorded_structure(self.model, data))
        ckpt.load_state(self.model, data, self.options.arch, self.data.num_classes, source=f"checkpoint {path}",
                        in_chans=self.data.in_chans)
        self.state.records = dict(data["records"])
        self.state.masks = dict(data["masks"])
        self.initialized = True

    # ----------------------------------------------------------------- helpers
    def _to_device(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _loader(self, indices: torch.Tensor | None, train: bool, seed: int) -> BatchLoader:
        """Training batches (each process gets its share of every global batch), or the test set
        (each process gets its part of it)."""
        data = self.data
        x, y = (data.train_x, data.train_y) if train else (data.test_x, data.test_y)
        if train:
            return BatchLoader(x, y, indices, self.options.batch_size, data.mean, data.std, train=True, seed=seed,
                               device=self.device, channels_last=self.options.channels_last,
                               rank=distributed.rank(), world_size=distributed.world_size())
        return BatchLoader(x, y, self._eval_part(indices, y.numel()), self.options.eval_batch_size, data.mean,
                           data.std, train=False, seed=seed, device=self.device,
                           channels_last=self.options.channels_last)

    def _validation_loader(self) -> BatchLoader:
        """The held-out validation images (from the training set), unaugmented."""
        data = self.data
        return BatchLoader(data.train_x, data.train_y, self._eval_part(self.validation, data.train_y.numel()),
                           self.options.eval_batch_size, data.mean, data.std, train=False, device=self.device,
                           channels_last=self.options.channels_last)

    @staticmethod
    def _eval_part(indices: torch.Tensor | None, total: int) -> torch.Tensor | None:
        """The evaluation images of this process: all of them on one process, else its part."""
        if not distributed.active():
            return indices
        return distributed.shard(torch.arange(total) if indices is None else indices)

    def _input_size(self) -> tuple[int, int, int]:
        return (self.data.in_chans, self.data.image_size, self.data.image_size)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl (one write; a torn line is dropped on resume); rank 0 writes."""
        distributed.run_on_main(ckpt.append_line, self.run_dir / "metrics.jsonl", json.dumps(record))

    # --------------------------------------------------------------- the run
    def prepare_directory(self) -> None:
        """Create the run directory and write config.yaml, shards.json and an empty metrics.jsonl
        (fresh runs, and resumed ones that had no complete phase); rank 0 writes."""
        distributed.run_on_main(self._write_directory)
        self.logs.open_log()

    def _write_directory(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"Cannot write the run directory {self.run_dir} ({exc.strerror}); pass a writable --out.") from None
        ckpt.atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.options.to_dict(), sort_keys=False))
        ckpt.atomic_write_json(self.run_dir / "shards.json",
                               {"seed": self.options.seed, "per_class": self.options.per_class,
                                "shards": [s.tolist() for s in self.shards],
                                "validation": None if self.validation is None else self.validation.tolist()})
        ckpt.atomic_write_text(self.run_dir / "metrics.jsonl", "")

    def check_disk_space(self) -> None:
        """Warn when the run directory's disk has less free space than the run's checkpoints need."""
        if not distributed.is_main():
            return
        try:
            free = shutil.disk_usage(self.run_dir).free
        except OSError:
            return
        needed = estimate_checkpoint_bytes(self.model, self.options, self._phase_order())
        if free < needed:
            log.warning("Only %.0f MB are free on the disk of %s but this run's checkpoints need about %.0f MB; "
                        "free some space or pass another --out.", free / 1e6, self.run_dir, needed / 1e6)

    def execute(self, only_phase: str | None = None, until: tuple[int, str] | None = None) -> dict[str, Any]:
        """Train every remaining phase of every step; return the results dict.

        ``only_phase`` runs just that phase of step 1 (``toolbox train``); ``until`` stops after
        that (step, phase) (a later ``execute`` goes on from there). Meanwhile the log goes to
        run.log and, unless ``--tensorboard false``, TensorBoard events to tb/ (rank 0).
        """
        options = self.options
        order = [(s, only_phase) for s in range(1, options.steps + 1)] if only_phase else self._phase_order()
        self.logs.start(order, options.epochs_for, self.state.done, self.partial)
        try:
            results = self._execute(only_phase, until)
            if until is None:
                self.logs.finish(options.to_dict(), results["steps"])
            return results
        finally:
            self.logs.close()

    def _execute(self, only_phase: str | None, until: tuple[int, str] | None) -> dict[str, Any]:
        """The phases of :meth:`execute`, then results.json's report."""
        options = self.options
        self.check_disk_space()
        first_phase = not self.state.done and not self.initialized
        for step in range(1, options.steps + 1):
            phases = [only_phase] if only_phase else plan_phases(self.pm, step, options.steps)
            for phase in phases:
                if (step, phase) not in self.state.done:
                    self._run_phase(step, phase, has_previous=not first_phase)
                    first_phase = False
                if (step, phase) == until:
                    break
            else:
                continue
            break
        results = self.results()
        distributed.run_on_main(report.write_run_report, self.run_dir, results)
        return results

    def results(self) -> dict[str, Any]:
        """The run's results: config plus one record per step."""
        return {"config": self.options.to_dict(), "dataset_source": self.data.source,
                "steps": self.state.results}

    # ------------------------------------------------------------- one phase
    def _run_phase(self, step: int, phase: str, has_previous: bool) -> None:
        """Train ``phase`` of ``step`` from its start, or from ``partial.pt`` after a kill."""
        partial = self._take_partial(step, phase)
        seed = phase_seed(self.options.seed, step, phase)
        torch.manual_seed(seed)
        chosen = self.pm.hook.toolbox_data_schedule(step=step, phase=phase, shards=self.shards)
        indices = self.shards[step - 1] if chosen is None else chosen
        ctx = self._phase_context(step, phase, self._frozen_copy() if has_previous else None)
        loader = self._loader(indices, train=True, seed=seed)
        ctx.batches_per_epoch = len(loader)
        ctx.start_epoch = 0 if partial is None else int(partial["epochs_done"])
        self.pm.hook.toolbox_phase_start(ctx=ctx)
        if partial is None:
            optimizer, before = self._begin_phase(ctx), 0.0
        else:
            optimizer, before = self._continue_phase(ctx, partial), float(partial.get("train_seconds", 0.0))
        train_seconds = before + self._train(ctx, optimizer, loader, before)
        self._finish_phase(ctx, indices, optimizer, train_seconds)

    def _frozen_copy(self) -> nn.Module:
        """The teacher: a frozen, eval-mode copy of the model as the previous phase left it."""
        teacher = copy.deepcopy(self.model).eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        return teacher

    def _phase_context(self, step: int, phase: str, teacher: nn.Module | None) -> Context:
        """The phase's :class:`Context` (masks and records carried over from the last phase)."""
        options = self.options
        return Context(options=options, model=self.model, device=self.device, run_dir=self.run_dir,
                       step=step, num_steps=options.steps, phase=phase,
                       epochs=options.epochs_for(phase), num_classes=self.data.num_classes,
                       input_size=self._input_size(), teacher=teacher, masks=self.state.masks,
                       records=self.state.records, logger=log)

    def _begin_phase(self, ctx: Context) -> torch.optim.Optimizer:
        """A phase from its start: the plugins' ``toolbox_prune`` chain, then the optimizer."""
        options, state = self.options, self.state
        model = chain_prune(self.pm, ctx, self.model)
        if model is not self.model:
            self.model = self._to_device(model)
            ctx.model = self.model
            state.optimizer_state = None
        optimizer = build_optimizer(self.model, options)
        if not options.reset_optimizer and state.optimizer_state is not None:
            optimizer.load_state_dict(state.optimizer_state)
        ctx.optimizer = optimizer
        return optimizer

    def _continue_phase(self, ctx: Context, partial: dict[str, Any]) -> torch.optim.Optimizer:
        """A phase from ``partial.pt``: no ``toolbox_prune`` (the saved model is already pruned);
        model, masks, records, optimizer, plugin states and the torch RNG as the last epoch left them."""
        self._load_partial_model(ctx, partial)
        ctx.masks, ctx.records = dict(partial["masks"]), dict(partial["records"])
        ctx.phase_metrics = dict(partial.get("phase_metrics") or {})
        ctx.global_batch = int(partial.get("global_batch", 0))
        ctx.epoch = ctx.start_epoch
        optimizer = build_optimizer(self.model, self.options)
        optimizer.load_state_dict(partial["optimizer"])
        ctx.optimizer = optimizer
        load_plugin_states(self.pm, ctx, partial.get("plugins") or {})
        set_rng_state(partial["rng"])
        log.info("Continuing step %d %s at epoch %d of %d from %s.", ctx.step, ctx.phase, ctx.start_epoch + 1,
                 ctx.epochs, partial["path"])
        return optimizer

    def _load_partial_model(self, ctx: Context, partial: dict[str, Any]) -> None:
        """Load the partial checkpoint's weights, rebuilding the model when a pruner changed its shape."""
        saved = partial["state_dict"]
        current = self.model.state_dict()
        if saved.keys() != current.keys() or any(saved[k].shape != current[k].shape for k in saved):
            fresh = ckpt.build_model(self.options.arch, self.data.num_classes, self.data.in_chans,
                                     self.options.model_kwargs)
            self.model = self._to_device(ckpt.apply_recorded_structure(fresh, partial))
            ctx.model = self.model
        ckpt.load_state(self.model, partial, self.options.arch, self.data.num_classes,
                        source=partial["path"], in_chans=self.data.in_chans)

    def _train(self, ctx: Context, optimizer: torch.optim.Optimizer, loader: BatchLoader,
               before: float) -> float:
        """Train epochs ``ctx.start_epoch ..`` with a partial checkpoint after each but the last;
        return the seconds spent training (checkpoint writes excluded)."""
        step, phase = ctx.step, ctx.phase
        started = time.perf_counter()
        saving = 0.0

        def batches(epoch: int) -> BatchLoader:
            loader.set_epoch(epoch)
            return loader

        def epoch_done(epoch: int, metrics: dict[str, Any]) -> None:
            nonlocal saving
            self._append_metrics({"step": step, "phase": phase, "epoch": epoch + 1, **metrics})
            self.logs.epoch(step, phase, epoch + 1, ctx.epochs, metrics)
            if self.progress is not None:
                self.progress("epoch", step=step, phase=phase, epoch=epoch + 1, epochs=ctx.epochs, metrics=metrics)
            if epoch + 1 < ctx.epochs:
                begun = time.perf_counter()
                distributed.run_on_main(self._save_partial, ctx, optimizer, epoch + 1,
                                        before + begun - started - saving)
                saving += time.perf_counter() - begun

        if self.progress is not None:
            self.progress("phase", step=step, phase=phase, epochs=ctx.epochs,
                          batches=len(loader) * max(ctx.epochs - ctx.start_epoch, 0))
        if ctx.epochs > ctx.start_epoch and len(loader) > 0:
            forward = distributed.wrap(self.model, self.device)  # wrapped after toolbox_prune: rank 0's weights
            Trainer(self.pm, ctx, forward).train(optimizer, batches, len(loader), start_epoch=ctx.start_epoch,
                                                 on_batch=self._batch_callback(ctx), on_epoch_end=epoch_done)
        return time.perf_counter() - started - saving

    def _batch_callback(self, ctx: Context) -> Callable[[], None] | None:
        """Progress per batch, plus the ``batch:`` kill point when a test asks for it; ``None`` if neither."""
        progress = self.progress
        kill = os.environ.get(ckpt.KILL_ENV, "").startswith("batch:")
        if progress is None and not kill:
            return None

        def on_batch() -> None:
            if progress is not None:
                progress("batch")
            if kill:
                ckpt.kill_point(f"batch:{ctx.step}:{ctx.phase}:{ctx.epoch + 1}:{ctx.batch_index + 1}")

        return on_batch

    def _finish_phase(self, ctx: Context, indices: torch.Tensor, optimizer: torch.optim.Optimizer,
                      train_seconds: float) -> None:
        """Phase end hooks, evaluation, the phase's record and checkpoint; drop ``partial.pt``."""
        options, state, step, phase = self.options, self.state, ctx.step, ctx.phase
        self.pm.hook.toolbox_phase_end(ctx=ctx)
        distributed.broadcast_module(self.model)  # BN running statistics: rank 0's on every process
        ctx.masks = distributed.broadcast_masks(ctx.masks)
        state.masks, state.records = ctx.masks, ctx.records
        test = evaluate(self.model, self._loader(None, train=False, seed=0), self.device, options.precision,
                        across_processes=True)
        validation = {}
        if self.validation is not None:
            scores = evaluate(self.model, self._validation_loader(), self.device, options.precision,
                              across_processes=True)
            validation = {"val_top1": scores["top1"], "val_top5": scores["top5"], "val_loss": scores["loss"]}
        record = {"phase": phase, "epochs": ctx.epochs, "images": int(indices.numel()),
                  "top1": test["top1"], "top5": test["top5"], "test_loss": test["loss"], **validation,
                  "train_seconds": train_seconds, "params": count_params(self.model),
                  "macs": count_macs(self.model, self._input_size()), **ctx.phase_metrics}
        self._append_metrics({"step": step, "phase": phase, "eval": test})
        self._record_phase(step, record)
        self.logs.phase(step, phase, record, self.model)
        state.optimizer_state = None if options.reset_optimizer else optimizer.state_dict()
        state.done.add((step, phase))
        distributed.run_on_main(self._save, step, phase)
        if self.progress is not None:
            self.progress("phase_end", step=step, phase=phase, record=record)

    def _record_phase(self, step: int, record: dict[str, Any]) -> None:
        """Add a phase record; the step's summary is its last phase's accuracy and cost."""
        results = self.state.results
        if not results or results[-1]["step"] != step:
            results.append({"step": step, "phases": []})
        entry = results[-1]
        entry["phases"].append(record)
        sparsity = [p["sparsity"] for p in entry["phases"] if "sparsity" in p]
        entry.update(top1=record["top1"], top5=record["top5"],
                     train_seconds=sum(p["train_seconds"] for p in entry["phases"]),
                     params=record["params"], macs=record["macs"],
                     sparsity=sparsity[-1] if sparsity else None)

    def _checkpoint(self, step: int, phase: str, masks: dict[str, torch.Tensor], records: dict[str, Any],
                    optimizer: dict[str, Any] | None) -> dict[str, Any]:
        """The checkpoint dict of the current model (shared by phase and partial checkpoints)."""
        data = ckpt.make_checkpoint(
            self.model, arch=self.options.arch, num_classes=self.data.num_classes,
            in_chans=self.data.in_chans, model_kwargs=self.options.model_kwargs, step=step,
            phase=phase, masks=masks, records=records, options=self.options.to_dict(),
            results=self.state.results, optimizer=optimizer, input_size=self._input_size())
        data["done"] = sorted([list(item) for item in self.state.done])
        return data

    def _save(self, step: int, phase: str) -> None:
        """The checkpoint at the end of a phase, then results.json; drop ``partial.pt``."""
        state = self.state
        data = self._checkpoint(step, phase, state.masks, state.records, state.optimizer_state)
        ckpt.save_checkpoint(ckpt.phase_checkpoint_path(self.run_dir, step, phase), data)
        ckpt.atomic_write_json(self.run_dir / "results.json", self.results())
        ckpt.partial_checkpoint_path(self.run_dir).unlink(missing_ok=True)

    def _save_partial(self, ctx: Context, optimizer: torch.optim.Optimizer, epochs_done: int,
                      train_seconds: float) -> None:
        """``checkpoints/partial.pt``: everything needed to continue the phase after ``epochs_done`` epochs."""
        data = self._checkpoint(ctx.step, ctx.phase, ctx.masks, ctx.records, optimizer.state_dict())
        data.update(partial=True, epochs_done=int(epochs_done), epochs=int(ctx.epochs), rng=rng_state(),
                    plugins=plugin_states(self.pm, ctx), train_seconds=float(train_seconds),
                    phase_metrics=dict(ctx.phase_metrics), global_batch=int(ctx.global_batch))
        ckpt.save_checkpoint(ckpt.partial_checkpoint_path(self.run_dir), data)

    # ----------------------------------------------------------------- resume
    def _phase_order(self) -> list[tuple[int, str]]:
        """Every (step, phase) of the run, in training order."""
        return [(step, phase) for step in range(1, self.options.steps + 1)
                for phase in plan_phases(self.pm, step, self.options.steps)]

    def restore(self) -> str | None:
        """Load the last complete phase's checkpoint and, when it belongs to the next phase,
        ``partial.pt``; return where the run continues (``None``: from the very beginning)."""
        self.logs.open_log()
        distributed.run_on_main(self._remove_temp_files)
        order = self._phase_order()
        last = self._restore_complete(order)
        self.partial = self._find_partial(order)
        distributed.run_on_main(self._trim_metrics)
        if self.partial is not None:
            return (f"step {self.partial['step']} {self.partial['phase']}, epoch "
                    f"{self.partial['epochs_done'] + 1} of {self.partial['epochs']}")
        return None if last is None else f"after step {last[0]} {last[1]}"

    def _remove_temp_files(self) -> None:
        """Delete the temp files of writes that a kill interrupted."""
        for folder in (self.run_dir, self.run_dir / "checkpoints"):
            for tmp in ckpt.remove_temp_files(folder):
                log.info("Removed %s, the temp file of a write that a kill interrupted.", tmp)

    @staticmethod
    def _read_checkpoint(path: Path) -> dict[str, Any] | CheckpointError | None:
        """The checkpoint at ``path`` (rank 0 reads it, every process gets it): ``None`` when there
        is none, the :class:`CheckpointError` when it cannot be read."""
        def read() -> dict[str, Any] | CheckpointError | None:
            if not path.exists():
                return None
            try:
                return ckpt.load_checkpoint(path)
            except CheckpointError as exc:
                return exc

        return distributed.run_on_main(read)

    def _restore_complete(self, order: list[tuple[int, str]]) -> tuple[int, str] | None:
        """Load the newest readable phase checkpoint (a truncated one is skipped with a warning)."""
        for step, phase in reversed(order):
            path = ckpt.phase_checkpoint_path(self.run_dir, step, phase)
            data = self._read_checkpoint(path)
            if data is None:
                continue
            if isinstance(data, CheckpointError):
                log.warning("Ignoring checkpoint %s: %s", path, data)
                continue
            self.model = self._to_device(ckpt.apply_recorded_structure(self.model, data))
            ckpt.load_state(self.model, data, self.options.arch, self.data.num_classes, source=f"checkpoint {path}",
                            in_chans=self.data.in_chans)
            self.state = RunState(results=data["results"], masks=data["masks"], records=data["records"],
                                  optimizer_state=data.get("optimizer"),
                                  done={(int(s), str(p)) for s, p in data["done"]})
            return step, phase
        return None

    def _find_partial(self, order: list[tuple[int, str]]) -> dict[str, Any] | None:
        """``partial.pt`` when it continues the phase right after the restored one; else ``None``
        (a truncated, stale or foreign one is ignored with a warning)."""
        path = ckpt.partial_checkpoint_path(self.run_dir)
        data = self._read_checkpoint(path)
        if data is None:
            return None
        if isinstance(data, CheckpointError):
            log.warning("Ignoring the unfinished phase's checkpoint %s: %s", path, data)
            return None
        key = (int(data.get("step", 0)), str(data.get("phase")))
        if key in self.state.done:
            distributed.run_on_main(path.unlink, missing_ok=True)  # its phase completed after it was written
            return None
        pending = [item for item in order if item not in self.state.done]
        done_then = {(int(s), str(p)) for s, p in data.get("done", [])}
        epochs_done = int(data.get("epochs_done", 0))
        if (not data.get("partial") or not pending or key != pending[0] or done_then != self.state.done
                or not 0 < epochs_done < self.options.epochs_for(key[1])):
            log.warning("Ignoring %s: it does not continue the phase after the last complete checkpoint; "
                        "that phase restarts from its beginning.", path)
            return None
        data["path"] = str(path)
        return data

    def _take_partial(self, step: int, phase: str) -> dict[str, Any] | None:
        """The pending partial checkpoint if it is for this phase (used once)."""
        partial, self.partial = self.partial, None
        if partial is not None and (int(partial["step"]), str(partial["phase"])) == (step, phase):
            return partial
        return None

    def _trim_metrics(self) -> None:
        """Keep the metric lines of complete phases and of the partial phase's saved epochs; drop
        the rest (they will be trained again) and torn lines (a kill during an append), with a warning."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        partial = None if self.partial is None else (int(self.partial["step"]), str(self.partial["phase"]))
        epochs = 0 if self.partial is None else int(self.partial["epochs_done"])
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
            if key in self.state.done or (key == partial and "epoch" in item and item["epoch"] <= epochs):
                kept.append(line)
        if torn:
            log.warning("Dropped %d torn line(s) of %s (written when the run was killed).", torn, path)
        ckpt.atomic_write_text(path, "".join(line + "\n" for line in kept))


def estimate_checkpoint_bytes(model: nn.Module, options: RunOptions, order: list[tuple[int, str]]) -> int:
    """Disk a run's checkpoints need: one per phase (weights, optimizer state when kept), plus
    ``partial.pt`` with the optimizer and a temp copy of the largest file during a write."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    per_phase = weights * (1 if options.reset_optimizer else 2)
    return len(order) * per_phase + 2 * (2 * weights) + (1 << 20)


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


def _call(impl: Any, **kwargs: Any) -> Any:
    """Call one pluggy hook implementation with the arguments it asks for."""
    return impl.function(*[kwargs[name] for name in impl.argnames])


def plugin_states(pm: pluggy.PluginManager, ctx: Context) -> dict[str, Any]:
    """``toolbox_state_dict`` of every plugin that implements it and returns something, by plugin name."""
    states: dict[str, Any] = {}
    for impl in pm.hook.toolbox_state_dict.get_hookimpls():
        value = _call(impl, ctx=ctx)
        if value is not None:
            states[impl.plugin_name] = value
    return states


def load_plugin_states(pm: pluggy.PluginManager, ctx: Context, states: dict[str, Any]) -> None:
    """Hand each plugin the state it saved (``toolbox_load_state_dict``); plugins without one are skipped."""
    for impl in pm.hook.toolbox_load_state_dict.get_hookimpls():
        if impl.plugin_name in states:
            _call(impl, ctx=ctx, state=states[impl.plugin_name])


def start_run(values: dict[str, Any], progress: Callable[..., Any] | None = None,
              init: Path | None = None, extra_plugins: dict[str, Any] | None = None) -> Run:
    """Validate ``values`` (merged config + flags), load plugins and data, prepare a fresh run.

    ``init`` starts from a checkpoint's weights and masks; its arch and model options win.
    ``extra_plugins`` registers plugin objects directly (name -> object), after ``--plugins``.
    """
    distributed.init()
    if init is not None:
        recorded = distributed.run_on_main(ckpt.load_checkpoint, init)
        values = {**values, "arch": recorded["arch"], "model_kwargs": recorded.get("model_kwargs") or {}}
    pm = load_plugins(_plugin_names(values), extra_plugins)
    options = build_options(dict(values), declared_options(pm), dormant_options(_plugin_names(values)))
    run_dir = Path(distributed.broadcast_object(str(options.out or default_run_dir(options))))
    options.out = str(run_dir)
    if options.seeds:
        raise UsageError("--seeds runs several experiments; use toolbox.run.run_seeds (the CLI does) instead of start_run.")
    run = Run(options, pm, run_dir, progress)
    if init is not None:
        run.initialize_from(init)
    if distributed.run_on_main(_holds_run, run_dir):
        raise UsageError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it or another --out.")
    run.prepare_directory()
    return run


def _holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a run's checkpoints."""
    return (ckpt.partial_checkpoint_path(run_dir).exists()
            or any(ckpt.phase_checkpoint_path(run_dir, 1, p).exists() for p in PHASES))


def resume_run(run_dir: Path, progress: Callable[..., Any] | None = None,
               extra_plugins: dict[str, Any] | None = None) -> Run:
    """Reopen the run in ``run_dir`` from its config.yaml and last complete checkpoint."""
    distributed.init()
    run_dir = Path(run_dir)
    values = distributed.run_on_main(read_run_config, run_dir)
    pm = load_plugins(_plugin_names(values), extra_plugins)
    options = build_options(values, declared_options(pm))
    run = Run(options, pm, run_dir, progress)
    where = run.restore()
    if where is None:
        log.warning("No complete phase in %s; starting it from the beginning.", run_dir)
        run.prepare_directory()
    else:
        log.info("Resuming %s at %s.", run_dir, where)
    return run


EXPERIMENT_FILE = "experiment.yaml"


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The options in ``run_dir/config.yaml``; a folder without one is one sentence."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise UsageError(f"{run_dir} has no config.yaml, so it is not a run directory; pass the --out of an earlier run.")
    return read_mapping(config)


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML mapping the toolbox wrote (config.yaml, experiment.yaml); damage is one sentence."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UsageError(f"{path} is not readable YAML; the run directory is damaged (restore the file "
                         "or start a new run).") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path} does not hold a mapping of options; the run directory is damaged "
                         "(restore the file or start a new run).")
    return values


def seed_dirs(out: Path, seeds: list[int]) -> dict[int, Path]:
    """The sub-directory of each seed of a multi-seed experiment."""
    return {seed: Path(out) / f"seed{seed}" for seed in seeds}


def run_seeds(values: dict[str, Any], progress: Callable[..., Any] | None = None,
              announce: Callable[[Run], None] | None = None) -> Path:
    """Run one experiment once per seed in ``<out>/seed<k>/`` and write the comparison report.

    ``values`` holds ``seeds``; the merged values are kept in ``<out>/experiment.yaml`` so
    ``resume_seeds(out)`` can finish the seeds a kill interrupted.
    """
    distributed.init()
    names = _plugin_names(values)
    probe = build_options(dict(values), declared_options(load_plugins(names)), dormant_options(names))
    out = Path(distributed.broadcast_object(str(probe.out or default_run_dir(probe))))
    record = {k: v for k, v in values.items() if v is not None}
    record["out"] = str(out)
    distributed.run_on_main(_write_experiment, out, record)
    return _finish_seeds(out, record, progress, announce)


def _write_experiment(out: Path, record: dict[str, Any]) -> None:
    """Create ``out`` and write experiment.yaml; refuse a folder that already holds an experiment."""
    if (out / EXPERIMENT_FILE).exists():
        raise UsageError(f"{out} already holds an experiment; pass --resume {out} to continue it or another --out.")
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(out / EXPERIMENT_FILE, yaml.safe_dump(record, sort_keys=False))


def resume_seeds(out: Path, progress: Callable[..., Any] | None = None,
                 announce: Callable[[Run], None] | None = None) -> Path:
    """Finish a multi-seed experiment: resume started seeds, start the missing ones."""
    distributed.init()
    record = distributed.run_on_main(read_mapping, Path(out) / EXPERIMENT_FILE)
    return _finish_seeds(Path(out), record, progress, announce)


def _finish_seeds(out: Path, record: dict[str, Any], progress: Callable[..., Any] | None,
                  announce: Callable[[Run], None] | None) -> Path:
    seeds = [int(s) for s in (record["seeds"] if isinstance(record["seeds"], list) else str(record["seeds"]).split(","))]
    for seed, run_dir in seed_dirs(out, seeds).items():
        if distributed.run_on_main((run_dir / "config.yaml").exists):
            run = resume_run(run_dir, progress)
        else:
            run = start_run({**record, "seed": seed, "seeds": [], "out": str(run_dir)}, progress)
        if announce is not None:
            announce(run)
        run.execute()
    distributed.run_on_main(report.write_comparison, [out], out)
    return out


def _plugin_names(values: dict[str, Any]) -> list[str]:
    """The ``plugins`` value as a list of names (a comma-separated string, a list, or one value)."""
    names = values.get("plugins") or []
    if isinstance(names, str):
        return [p.strip() for p in names.split(",") if p.strip()]
    if isinstance(names, (list, tuple)):
        return [str(name) for name in names]
    return [str(names)]
