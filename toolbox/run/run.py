"""A run: steps (one per data shard) × phases (learn, and those plugins add), with checkpoints.

:class:`Run` reads like the loop of the design: for every step, for every phase the plugins plan,
train the phase (plugins' model surgery, the engine's epochs, the phase-end hooks), evaluate on
the test (and validation) images, record accuracy and cost, write the phase's checkpoint.
The run directory's files are :mod:`toolbox.run.directory`'s; continuing a killed run is
:mod:`toolbox.run.resume`'s; several seeds are :mod:`toolbox.run.seeds`'s.

Under ``torchrun`` every process runs the same :class:`Run` (``toolbox.runtime.distributed``): each
trains on its share of every global batch through DistributedDataParallel and evaluates its
share of the test set; rank 0 alone reads and writes the run directory and shares what it read
(:func:`toolbox.runtime.distributed.run_on_main`), so the files are those of a single-process run.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable

import pluggy
import torch
from torch import nn

from toolbox.context import Context
from toolbox.data.titles import describe_data
from toolbox.errors import UsageError
from toolbox.models import build_model
from toolbox.models.modules import freeze
from toolbox.models.sources import import_sources
from toolbox.options import RunOptions
from toolbox.plugin_host import calls
from toolbox.plugin_host.entry_points import import_model_packages
from toolbox.plugin_host.phases import LEARN, phase_seed, plan_phases, run_phases
from toolbox.preflight.analysis import check_run
from toolbox.pruning.cost import count_macs, count_params
from toolbox.run import directory as files
from toolbox.run import promotion
from toolbox.run import results as report
from toolbox.run import resume
from toolbox.run.engine import Trainer, build_optimizer, check_finite, near_chance
from toolbox.run.inputs import RunData
from toolbox.run.logs import RunLogs, batch_callback
from toolbox.run.serve_files import serve_checkpoint, serve_path
from toolbox.run.state import RunState
from toolbox.run.step_review import review_step
from toolbox.runtime import distributed
from toolbox.runtime.device import run_precision, select_device
from toolbox.storage import checkpoint as ckpt
from toolbox.storage.atomic import json_text

log = logging.getLogger("toolbox")


class Run:
    """One multi-step run: owns the model, the data, the plugins and the run directory.

    Longer than ~200 lines because it is the run's whole lifecycle in one readable place: the
    model it carries from phase to phase, the step x phase loop, and one phase's start, training,
    evaluation and checkpoint; the data, the run directory's files and resuming live elsewhere.
    """

    def __init__(self, options: RunOptions, pm: pluggy.PluginManager, run_dir: Path,
                 progress: "Callable[..., Any] | None" = None) -> None:
        distributed.init()
        self.options = options
        self.pm = pm
        self.phases = run_phases(pm)  # name -> place, read once (plugins' declarations)
        self.run_dir = Path(run_dir)
        self.progress = progress if distributed.is_main() else None
        self.device = distributed.local_device(select_device(options.device))
        options.precision = run_precision(options.precision, self.device)  # recorded resolved
        distributed.local_batch_size(options.batch_size)  # refuses a global batch the processes cannot share
        if options.threads:
            torch.set_num_threads(options.threads)
        promotion.parse_rule(options.promote)  # a bad --promote is refused before anything is read or written
        import_model_packages()  # installed backbones, then --models-from: a broken one, before the data is read
        import_sources(options.models_from)
        self.inputs = RunData(options, self.device, pm)
        self.data = self.inputs.data
        log.info("data: %s", describe_data(self.data.name, self.data.source))  # the first line a run prints
        self.validation, self.shards = self.inputs.validation, self.inputs.shards
        torch.manual_seed(options.seed)
        self.model = self.fresh_model()
        self.state = RunState()
        self.partial: dict[str, Any] | None = None
        self.last_learn_top1: float | None = None  # of the last learn epoch this process trained
        self.initialized = False
        self.logs = RunLogs(self.run_dir, options)  # run.log and tb/ (rank 0)
        calls.configure(self.pm, options)
        check_run(options.arch, options.model_kwargs, self.data.num_classes, self.data.in_chans,
                  self.data.image_size, options.plugins, calls.preflight_ratio(self.pm))
        distributed.check_same("options and dataset", {
            **options.to_dict(), "train images": int(self.data.train_y.numel()),
            "test images": int(self.data.test_y.numel()), "classes": self.data.num_classes})

    # ------------------------------------------------------------- the model
    def to_device(self, model: nn.Module) -> nn.Module:
        """``model`` on the run's device, in channels-last memory format when the run uses it."""
        model = model.to(self.device)
        if self.options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def fresh_model(self) -> nn.Module:
        """A freshly initialized model of the run's architecture, on the run's device."""
        options, data = self.options, self.data
        return self.to_device(build_model(options.arch, data.num_classes, data.in_chans, options.model_kwargs,
                                          options.models_from))

    def load_weights(self, data: dict[str, Any], source: str) -> None:
        """Load a checkpoint's weights into the current model (a mismatch is one sentence)."""
        ckpt.load_state(self.model, data, self.options.arch, self.data.num_classes, source=source,
                        in_chans=self.data.in_chans)

    def load_model_state(self, data: dict[str, Any], source: str) -> None:
        """Apply a checkpoint's recorded structure (e.g. removed channels) to the model, then its weights."""
        self.model = self.to_device(ckpt.apply_recorded_structure(self.model, data))
        self.load_weights(data, source)

    def new_optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer over the current model's parameters."""
        return build_optimizer(self.model, self.options)

    def initialize_from(self, path: Path) -> None:
        """Start from the weights and masks of a checkpoint (``toolbox train --init``)."""
        data = distributed.run_on_main(ckpt.load_checkpoint, path)
        self.load_model_state(data, f"checkpoint {path}")
        self.state.records = dict(data["records"])
        self.state.masks = dict(data["masks"])
        self.initialized = True

    # ------------------------------------------------------------- the run
    def plan(self, step: int) -> list[str]:
        """The phases of ``step``. A run meant to continue (``--open-ended``, every ``--shards`` run)
        plans every step as if another came after it, so each step ends with its sparsify phase and
        ``toolbox step`` finds the masks."""
        steps = step + 1 if self.options.open_ended else self.options.steps
        return plan_phases(self.pm, step, steps, self.phases)

    def phase_order(self) -> list[tuple[int, str]]:
        """Every (step, phase) of the run, in training order."""
        return [(step, phase) for step in range(1, self.options.steps + 1)
                for phase in self.plan(step)]

    def prepare_directory(self) -> None:
        """Write the run directory's first files (fresh runs, and resumed ones with no complete phase)."""
        distributed.run_on_main(files.write_first_files, self.run_dir, self.options, self.shards, self.validation,
                                self.data, self.inputs.arrivals())
        self.logs.open_log()

    def check_disk_space(self) -> None:
        """Warn when the run directory's disk has less free space than the run's checkpoints need."""
        if distributed.is_main():
            files.check_disk_space(self.run_dir, self.model, self.options, len(self.phase_order()))

    def restore(self) -> str | None:
        """Continue from the run directory's checkpoints (:func:`toolbox.run.resume.restore`);
        return where the run continues (``None``: from the very beginning)."""
        self.logs.open_log()
        restored = resume.restore(self.run_dir, self.phase_order(), self.options.epochs_for)
        if restored.checkpoint is not None:
            self.load_model_state(restored.checkpoint, restored.source)
            self.state = restored.state
            distributed.run_on_main(self._restore_serve_files)
        self.partial = restored.partial
        return restored.where

    def execute(self, only_phase: str | None = None, until: tuple[int, str] | None = None) -> dict[str, Any]:
        """Train every remaining phase of every step; return the results dict.

        ``only_phase`` runs just that phase of step 1 (``toolbox train``); ``until`` stops after
        that (step, phase) (a later ``execute`` goes on from there). Meanwhile run.log and tb/ are written.
        """
        order = [(s, only_phase) for s in range(1, self.options.steps + 1)] if only_phase else self.phase_order()
        return self.logs.around(order, self.state.done, self.partial, until is None,
                                lambda: self._execute(only_phase, until))

    def _execute(self, only_phase: str | None, until: tuple[int, str] | None) -> dict[str, Any]:
        """:meth:`execute`'s loop over the steps and their phases, then the run's report."""
        if only_phase is not None and only_phase not in self.phases:
            raise UsageError(f"--phase {only_phase!r} is not a phase of the enabled plugins; use one of "
                             f"{', '.join(self.phases)}.")
        self.check_disk_space()
        first_phase = not self.state.done and not self.initialized
        for step in range(1, self.options.steps + 1):
            phases = [only_phase] if only_phase else self.plan(step)
            for phase in phases:
                if (step, phase) not in self.state.done:
                    self._run_phase(step, phase, has_previous=not first_phase, step_phases=phases)
                    first_phase = False
                if (step, phase) == until:
                    break
            else:
                continue
            break
        self._warn_if_near_chance()
        results = self.results()
        distributed.run_on_main(report.write_run_report, self.run_dir, results)
        return results

    def _warn_if_near_chance(self) -> None:
        """Say what to try when the last learn phase this process trained stayed near chance."""
        top1, classes = self.last_learn_top1, self.data.num_classes
        if top1 is not None and near_chance(top1, classes):
            log.warning("The model did not learn: training top-1 %.1f %% in the last learn phase, chance is %.1f %%; "
                        "try more epochs (--epochs, now %d), another --lr (now %g), or check that the class folders "
                        "hold what their names say.", top1, 100.0 / classes, self.options.epochs, self.options.lr)

    def results(self) -> dict[str, Any]:
        """The run's results: config plus one record per step."""
        results = {"config": self.options.to_dict(), "dataset_source": self.data.source, "steps": self.state.results}
        if self.options.split != "stratified":
            results["arrivals"] = self.inputs.arrivals()
        return results

    # ------------------------------------------------------------- one phase
    def _run_phase(self, step: int, phase: str, has_previous: bool, step_phases: list[str] | None = None) -> None:
        """Train ``phase`` of ``step`` from its start, or from ``partial.pt`` after a kill."""
        partial = self._take_partial(step, phase)
        seed = phase_seed(self.options.seed, step, self.phases[phase])
        torch.manual_seed(seed)
        chosen = calls.data_schedule(self.pm, step, phase, self.inputs.schedule_shards())
        x, y, indices = self.inputs.training_set(step, chosen)
        ctx = self._phase_context(step, phase, self._frozen_copy() if has_previous else None)
        loader = self.inputs.train_loader(x, y, indices, seed)
        ctx.batches_per_epoch = len(loader)
        ctx.step_phases = tuple(step_phases or (phase,))
        ctx.batch_source = lambda: self.inputs.plain_loader(x, y, indices)
        ctx.start_epoch = 0 if partial is None else int(partial["epochs_done"])
        calls.phase_start(self.pm, ctx)
        if partial is None:
            optimizer, before = self._begin_phase(ctx), 0.0
        else:
            self._load_partial_model(ctx, partial)
            optimizer = resume.continue_phase(ctx, partial, self.new_optimizer(), self.pm)
            before = float(partial.get("train_seconds", 0.0))
        train_seconds = before + self._train(ctx, optimizer, loader, before)
        self._finish_phase(ctx, x.shape[0] if indices is None else int(indices.numel()), optimizer, train_seconds)

    def _take_partial(self, step: int, phase: str) -> dict[str, Any] | None:
        """The pending partial checkpoint if it is for this phase (used once)."""
        partial, self.partial = self.partial, None
        if partial is not None and (int(partial["step"]), str(partial["phase"])) == (step, phase):
            return partial
        return None

    def _load_partial_model(self, ctx: Context, partial: dict[str, Any]) -> None:
        """Load ``partial.pt``'s weights, rebuilding the model when a pruner changed its shape."""
        if resume.same_shapes(partial["state_dict"], self.model.state_dict()):
            self.load_weights(partial, partial["path"])
        else:
            self.model = self.fresh_model()
            self.load_model_state(partial, partial["path"])
        ctx.model = self.model

    def _frozen_copy(self) -> nn.Module:
        """The teacher: a frozen, eval-mode copy of the model as the previous phase left it."""
        return freeze(copy.deepcopy(self.model))

    def _phase_context(self, step: int, phase: str, teacher: nn.Module | None) -> Context:
        """The phase's :class:`Context` (masks and records carried over from the last phase)."""
        options = self.options
        return Context(options=options, model=self.model, device=self.device, run_dir=self.run_dir,
                       step=step, num_steps=options.steps, phase=phase,
                       epochs=options.epochs_for(phase), num_classes=self.data.num_classes,
                       input_size=self.inputs.input_size, teacher=teacher, masks=self.state.masks,
                       records=self.state.records, logger=log, model_factory=self.fresh_model)

    def _begin_phase(self, ctx: Context) -> torch.optim.Optimizer:
        """A phase from its start: the plugins' model surgery chain, then the optimizer."""
        state = self.state
        model = calls.model_surgery(self.pm, ctx, self.model)
        if model is not self.model:
            self.model = self.to_device(model)
            ctx.model = self.model
            state.optimizer_state = None
        optimizer = self.new_optimizer()
        if not self.options.reset_optimizer and state.optimizer_state is not None:
            optimizer.load_state_dict(state.optimizer_state)
        ctx.optimizer = optimizer
        return optimizer

    def _train(self, ctx: Context, optimizer: torch.optim.Optimizer, loader: Any, before: float) -> float:
        """Train epochs ``ctx.start_epoch ..`` with a partial checkpoint after each but the last;
        return the seconds spent training (checkpoint writes excluded)."""
        step, phase = ctx.step, ctx.phase
        started = time.perf_counter()
        saving = 0.0

        def batches(epoch: int) -> Any:
            loader.set_epoch(epoch)
            return loader

        def epoch_done(epoch: int, metrics: dict[str, Any]) -> None:
            nonlocal saving
            self._append_metrics({"step": step, "phase": phase, "epoch": epoch + 1, **metrics})
            if phase == LEARN and "train_top1" in metrics:
                self.last_learn_top1 = float(metrics["train_top1"])
            self.logs.epoch(step, phase, epoch + 1, ctx.epochs, metrics)
            if self.progress is not None:
                self.progress("epoch", step=step, phase=phase, epoch=epoch + 1, epochs=ctx.epochs, metrics=metrics)
            if epoch + 1 < ctx.epochs:
                check_finite(self.model, metrics, f"step {step} {phase} epoch {epoch + 1}", self._diverged_hint())
                begun = time.perf_counter()
                distributed.run_on_main(self._save_partial, ctx, optimizer, epoch + 1,
                                        before + begun - started - saving)
                saving += time.perf_counter() - begun

        if self.progress is not None:
            self.progress("phase", step=step, phase=phase, epochs=ctx.epochs,
                          batches=len(loader) * max(ctx.epochs - ctx.start_epoch, 0))
        if ctx.epochs > ctx.start_epoch and len(loader) > 0:
            forward = distributed.wrap(self.model, self.device)  # wrapped after the surgery: rank 0's weights
            Trainer(self.pm, ctx, forward).train(optimizer, batches, len(loader), start_epoch=ctx.start_epoch,
                                                 on_batch=batch_callback(self.progress, ctx), on_epoch_end=epoch_done)
        return time.perf_counter() - started - saving

    def _finish_phase(self, ctx: Context, images: int, optimizer: torch.optim.Optimizer,
                      train_seconds: float) -> None:
        """Phase end hooks, evaluation, the phase's record and checkpoint; drop ``partial.pt``."""
        options, state, step, phase = self.options, self.state, ctx.step, ctx.phase
        calls.phase_end(self.pm, ctx)
        distributed.broadcast_module(self.model)  # BN running statistics: rank 0's on every process
        ctx.masks = distributed.broadcast_masks(ctx.masks)
        state.masks, state.records = ctx.masks, ctx.records
        record = {"phase": phase, "epochs": ctx.epochs, "images": int(images),
                  **self._evaluate(ctx), "train_seconds": train_seconds, "params": count_params(self.model),
                  "macs": count_macs(self.model, self.inputs.input_size), **ctx.phase_metrics}
        state.record_phase(step, record, served=self._serves(step, phase))
        self.logs.phase(step, phase, record, self.model)
        state.optimizer_state = None if options.reset_optimizer else optimizer.state_dict()
        state.done.add((step, phase))
        distributed.run_on_main(self._write_serve, step, phase)  # before the checkpoint that marks the phase done
        if phase == self.plan(step)[-1]:  # the step is done: what it changed, and is it promoted?
            state.results[-1].update(distributed.run_on_main(review_step, self, step))
            self.logs.review(step, state.results[-1])
        distributed.run_on_main(files.save_phase, self.run_dir, step, phase,
                                self._checkpoint(step, phase, state.masks, state.records, state.optimizer_state),
                                self.results())
        if self.progress is not None:
            self.progress("phase_end", step=step, phase=phase, record=record)

    def _evaluate(self, ctx: Context) -> dict[str, Any]:
        """Test (and validation) scores of the model; the test scores also go to metrics.jsonl."""
        test, scores = self.inputs.evaluate(self.model, self.options.precision)
        check_finite(self.model, scores, f"the end of step {ctx.step} {ctx.phase}", self._diverged_hint())
        self._append_metrics({"step": ctx.step, "phase": ctx.phase, "eval": test})
        return scores

    def _diverged_hint(self) -> str:
        """What to do about a diverged phase."""
        return (f"lower --lr (now {self.options.lr:g}) and continue from the last good checkpoint with "
                f"`toolbox run --resume {self.run_dir} --lr <lower>`.")

    def _append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl; rank 0 writes."""
        distributed.run_on_main(files.append_metrics, self.run_dir, json_text(record))

    def _checkpoint(self, step: int, phase: str, masks: dict[str, torch.Tensor], records: dict[str, Any],
                    optimizer: dict[str, Any] | None) -> dict[str, Any]:
        """The checkpoint dict of the current model (shared by phase and partial checkpoints)."""
        data = ckpt.make_checkpoint(
            self.model, arch=self.options.arch, num_classes=self.data.num_classes,
            in_chans=self.data.in_chans, model_kwargs=self.options.model_kwargs, step=step,
            phase=phase, masks=masks, records=records, options=self.options.to_dict(),
            results=self.state.results, optimizer=optimizer, input_size=self.inputs.input_size,
            classes=self.data.classes, normalization=(self.data.mean, self.data.std))
        data["done"] = sorted([list(item) for item in self.state.done])
        return data

    def _serves(self, step: int, phase: str) -> bool:
        """Whether ``phase`` of ``step`` gives the step's serve file (learn; the last phase with
        ``--serve compact``)."""
        return phase == LEARN or (phase == self.plan(step)[-1] and self.options.serve == "compact")

    def _write_serve(self, step: int, phase: str, model: nn.Module | None = None,
                     masks: dict[str, torch.Tensor] | None = None) -> None:
        """``serve/step{k}.pt``: the learn-phase model, or with ``--serve compact`` the step's last
        phase's model with its masked filters removed (``model``, ``masks``: the current ones)."""
        if not self._serves(step, phase):
            return
        options, data = self.options, self.data
        checkpoint = serve_checkpoint(
            self.model if model is None else model, self.state.masks if masks is None else masks,
            compacted=phase != LEARN, arch=options.arch,
            num_classes=data.num_classes, in_chans=data.in_chans, model_kwargs=options.model_kwargs, step=step,
            phase=phase, input_size=self.inputs.input_size, classes=data.classes, mean=data.mean, std=data.std,
            dataset=data.name)
        ckpt.save_checkpoint(serve_path(self.run_dir, step), checkpoint)

    def _restore_serve_files(self) -> None:
        """Write again the serve file of every finished step that has none (lost to a kill or
        removed), from the phase checkpoint it comes from."""
        for step, phase in sorted(self.state.done):
            source = ckpt.phase_checkpoint_path(self.run_dir, step, phase)
            if self._serves(step, phase) and source.exists() and not serve_path(self.run_dir, step).exists():
                data = ckpt.load_checkpoint(source)
                with torch.random.fork_rng(devices=[]):  # building the model draws; the run's RNG is untouched
                    self._write_serve(step, phase, ckpt.model_from_checkpoint(data), data["masks"])
                log.info("Wrote %s again from %s.", serve_path(self.run_dir, step), source)

    def _save_partial(self, ctx: Context, optimizer: torch.optim.Optimizer, epochs_done: int,
                      train_seconds: float) -> None:
        """``checkpoints/partial.pt``: everything needed to continue the phase after ``epochs_done`` epochs."""
        data = self._checkpoint(ctx.step, ctx.phase, ctx.masks, ctx.records, optimizer.state_dict())
        data.update(partial=True, epochs_done=int(epochs_done), epochs=int(ctx.epochs), rng=resume.rng_state(),
                    plugins=calls.plugin_states(self.pm, ctx), train_seconds=float(train_seconds),
                    phase_metrics=dict(ctx.phase_metrics), global_batch=int(ctx.global_batch))
        ckpt.save_checkpoint(ckpt.partial_checkpoint_path(self.run_dir), data)
