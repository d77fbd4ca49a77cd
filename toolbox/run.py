"""A run: steps (one per data shard) × phases (learn, sparsify, compact), with checkpoints.

The run directory holds ``config.yaml``, ``shards.json``, ``metrics.jsonl``, a checkpoint after
every phase (``checkpoints/step{k}_{phase}.pt``), ``results.json``, ``results.md`` and plots.
``resume(run_dir)`` continues from the last complete phase. Every random draw of a phase comes
from generators seeded by (seed, step, phase), so a resumed run trains exactly as an
uninterrupted one would on the same machine.
"""

from __future__ import annotations

import copy
import json
import logging
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
from toolbox import report
from toolbox.context import Context
from toolbox.data import (BatchLoader, DatasetNotFoundError, ImageData, load_dataset,
                          split_shards)
from toolbox.engine import (Trainer, build_optimizer, count_macs, count_params, evaluate,
                            select_device)
from toolbox.errors import CheckpointError, UsageError
from toolbox.options import PHASES, RunOptions, build_options
from toolbox.plugins import chain_prune, declared_options, dormant_options, load_plugins

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
        self.options = options
        self.pm = pm
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = select_device(options.device)
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
        self.initialized = False
        self.pm.hook.toolbox_configure(options=options)

    def initialize_from(self, path: Path) -> None:
        """Start from the weights and masks of a checkpoint (``toolbox train --init``)."""
        data = ckpt.load_checkpoint(path)
        self.model = self._to_device(ckpt.apply_recorded_structure(self.model, data))
        ckpt.load_state(self.model, data, self.options.arch, self.data.num_classes, source=str(path))
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
        data = self.data
        x, y = (data.train_x, data.train_y) if train else (data.test_x, data.test_y)
        size = self.options.batch_size if train else self.options.eval_batch_size
        return BatchLoader(x, y, indices, size, data.mean, data.std, train=train, seed=seed,
                           device=self.device, channels_last=self.options.channels_last)

    def _validation_loader(self) -> BatchLoader:
        """The held-out validation images (from the training set), unaugmented."""
        data = self.data
        return BatchLoader(data.train_x, data.train_y, self.validation, self.options.eval_batch_size,
                           data.mean, data.std, train=False, device=self.device,
                           channels_last=self.options.channels_last)

    def _input_size(self) -> tuple[int, int, int]:
        return (self.data.in_chans, self.data.image_size, self.data.image_size)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    # --------------------------------------------------------------- the run
    def prepare_directory(self) -> None:
        """Create the run directory and write config.yaml and shards.json (fresh runs)."""
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
        (self.run_dir / "metrics.jsonl").touch()

    def execute(self, only_phase: str | None = None) -> dict[str, Any]:
        """Train every remaining phase of every step; return the results dict.

        ``only_phase`` runs just that phase of step 1 (``toolbox train``).
        """
        options = self.options
        first_phase = not self.state.done and not self.initialized
        for step in range(1, options.steps + 1):
            phases = [only_phase] if only_phase else plan_phases(self.pm, step, options.steps)
            for phase in phases:
                if (step, phase) in self.state.done:
                    continue
                self._run_phase(step, phase, has_previous=not first_phase)
                first_phase = False
        results = self.results()
        report.write_run_report(self.run_dir, results)
        return results

    def results(self) -> dict[str, Any]:
        """The run's results: config plus one record per step."""
        return {"config": self.options.to_dict(), "dataset_source": self.data.source,
                "steps": self.state.results}

    def _run_phase(self, step: int, phase: str, has_previous: bool) -> None:
        options, state = self.options, self.state
        seed = phase_seed(options.seed, step, phase)
        torch.manual_seed(seed)
        chosen = self.pm.hook.toolbox_data_schedule(step=step, phase=phase, shards=self.shards)
        indices = self.shards[step - 1] if chosen is None else chosen
        teacher = None
        if has_previous:
            teacher = copy.deepcopy(self.model).eval()
            for param in teacher.parameters():
                param.requires_grad_(False)
        ctx = Context(options=options, model=self.model, device=self.device, run_dir=self.run_dir,
                      step=step, num_steps=options.steps, phase=phase,
                      epochs=options.epochs_for(phase), num_classes=self.data.num_classes,
                      input_size=self._input_size(),
                      teacher=teacher, masks=state.masks, records=state.records, logger=log)
        loader = self._loader(indices, train=True, seed=seed)
        ctx.batches_per_epoch = len(loader)
        self.pm.hook.toolbox_phase_start(ctx=ctx)
        model = chain_prune(self.pm, ctx, self.model)
        if model is not self.model:
            self.model = self._to_device(model)
            ctx.model = self.model
            state.optimizer_state = None
        optimizer = build_optimizer(self.model, options)
        if not options.reset_optimizer and state.optimizer_state is not None:
            optimizer.load_state_dict(state.optimizer_state)
        ctx.optimizer = optimizer

        def batches(epoch: int) -> BatchLoader:
            loader.set_epoch(epoch)
            return loader

        def epoch_done(epoch: int, metrics: dict[str, Any]) -> None:
            self._append_metrics({"step": step, "phase": phase, "epoch": epoch + 1, **metrics})
            if self.progress is not None:
                self.progress("epoch", step=step, phase=phase, epoch=epoch + 1, epochs=ctx.epochs, metrics=metrics)

        on_batch = None
        if self.progress is not None:
            self.progress("phase", step=step, phase=phase, epochs=ctx.epochs, batches=len(loader) * ctx.epochs)
            on_batch = lambda: self.progress("batch")  # noqa: E731
        started = time.perf_counter()
        if ctx.epochs > 0 and len(loader) > 0:
            Trainer(self.pm, ctx).train(optimizer, batches, len(loader), on_batch=on_batch, on_epoch_end=epoch_done)
        train_seconds = time.perf_counter() - started
        self.pm.hook.toolbox_phase_end(ctx=ctx)
        state.masks, state.records = ctx.masks, ctx.records
        test = evaluate(self.model, self._loader(None, train=False, seed=0), self.device, options.precision)
        validation = {}
        if self.validation is not None:
            scores = evaluate(self.model, self._validation_loader(), self.device, options.precision)
            validation = {"val_top1": scores["top1"], "val_loss": scores["loss"]}
        record = {"phase": phase, "epochs": ctx.epochs, "images": int(indices.numel()),
                  "top1": test["top1"], "top5": test["top5"], "test_loss": test["loss"], **validation,
                  "train_seconds": train_seconds, "params": count_params(self.model),
                  "macs": count_macs(self.model, self._input_size()), **ctx.phase_metrics}
        self._append_metrics({"step": step, "phase": phase, "eval": test})
        self._record_phase(step, record)
        state.optimizer_state = None if options.reset_optimizer else optimizer.state_dict()
        state.done.add((step, phase))
        self._save(step, phase)
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

    def _save(self, step: int, phase: str) -> None:
        state = self.state
        data = ckpt.make_checkpoint(
            self.model, arch=self.options.arch, num_classes=self.data.num_classes,
            in_chans=self.data.in_chans, model_kwargs=self.options.model_kwargs, step=step,
            phase=phase, masks=state.masks, records=state.records, options=self.options.to_dict(),
            results=state.results, optimizer=state.optimizer_state, input_size=self._input_size())
        data["done"] = sorted([list(item) for item in state.done])
        ckpt.save_checkpoint(ckpt.phase_checkpoint_path(self.run_dir, step, phase), data)
        ckpt.atomic_write_json(self.run_dir / "results.json", self.results())

    # ----------------------------------------------------------------- resume
    def restore(self) -> tuple[int, str] | None:
        """Load the last complete phase's checkpoint from the run directory; None if there is none."""
        order = [(step, phase) for step in range(1, self.options.steps + 1)
                 for phase in plan_phases(self.pm, step, self.options.steps)]
        for step, phase in reversed(order):
            path = ckpt.phase_checkpoint_path(self.run_dir, step, phase)
            if not path.exists():
                continue
            try:
                data = ckpt.load_checkpoint(path)
            except CheckpointError as exc:
                log.warning("Ignoring checkpoint %s: %s", path, exc)
                continue
            self.model = self._to_device(ckpt.apply_recorded_structure(self.model, data))
            ckpt.load_state(self.model, data, self.options.arch, self.data.num_classes, source=str(path))
            self.state = RunState(results=data["results"], masks=data["masks"], records=data["records"],
                                  optimizer_state=data.get("optimizer"),
                                  done={(int(s), str(p)) for s, p in data["done"]})
            self._trim_metrics()
            return step, phase
        return None

    def _trim_metrics(self) -> None:
        """Drop metric lines of phases that did not complete (they will be trained again)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (item.get("step"), item.get("phase")) in self.state.done:
                kept.append(line)
        ckpt.atomic_write_text(path, "".join(line + "\n" for line in kept))


def start_run(values: dict[str, Any], progress: Callable[..., Any] | None = None,
              init: Path | None = None, extra_plugins: dict[str, Any] | None = None) -> Run:
    """Validate ``values`` (merged config + flags), load plugins and data, prepare a fresh run.

    ``init`` starts from a checkpoint's weights and masks; its arch and model options win.
    ``extra_plugins`` registers plugin objects directly (name -> object), after ``--plugins``.
    """
    if init is not None:
        recorded = ckpt.load_checkpoint(init)
        values = {**values, "arch": recorded["arch"], "model_kwargs": recorded.get("model_kwargs") or {}}
    pm = load_plugins(_plugin_names(values), extra_plugins)
    options = build_options(dict(values), declared_options(pm), dormant_options(_plugin_names(values)))
    run_dir = Path(options.out) if options.out else default_run_dir(options)
    options.out = str(run_dir)
    if options.seeds:
        raise UsageError("--seeds runs several experiments; use toolbox.run.run_seeds (the CLI does) instead of start_run.")
    run = Run(options, pm, run_dir, progress)
    if init is not None:
        run.initialize_from(init)
    if any(ckpt.phase_checkpoint_path(run_dir, 1, p).exists() for p in PHASES):
        raise UsageError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it or another --out.")
    run.prepare_directory()
    return run


def resume_run(run_dir: Path, progress: Callable[..., Any] | None = None,
               extra_plugins: dict[str, Any] | None = None) -> Run:
    """Reopen the run in ``run_dir`` from its config.yaml and last complete checkpoint."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UsageError(f"{run_dir} has no config.yaml, so it is not a run directory; pass the --out of an earlier run.")
    try:
        values = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError:
        raise UsageError(f"{config} is not valid YAML; the run directory is damaged.") from None
    pm = load_plugins(list(values.get("plugins") or []), extra_plugins)
    options = build_options(values, declared_options(pm))
    run = Run(options, pm, run_dir, progress)
    if run.restore() is None:
        log.warning("No complete phase in %s; starting it from the beginning.", run_dir)
        run.prepare_directory()
    return run


EXPERIMENT_FILE = "experiment.yaml"


def seed_dirs(out: Path, seeds: list[int]) -> dict[int, Path]:
    """The sub-directory of each seed of a multi-seed experiment."""
    return {seed: Path(out) / f"seed{seed}" for seed in seeds}


def run_seeds(values: dict[str, Any], progress: Callable[..., Any] | None = None,
              announce: Callable[[Run], None] | None = None) -> Path:
    """Run one experiment once per seed in ``<out>/seed<k>/`` and write the comparison report.

    ``values`` holds ``seeds``; the merged values are kept in ``<out>/experiment.yaml`` so
    ``resume_seeds(out)`` can finish the seeds a kill interrupted.
    """
    names = _plugin_names(values)
    probe = build_options(dict(values), declared_options(load_plugins(names)), dormant_options(names))
    out = Path(probe.out) if probe.out else default_run_dir(probe)
    if (out / EXPERIMENT_FILE).exists():
        raise UsageError(f"{out} already holds an experiment; pass --resume {out} to continue it or another --out.")
    out.mkdir(parents=True, exist_ok=True)
    record = {k: v for k, v in values.items() if v is not None}
    record["out"] = str(out)
    ckpt.atomic_write_text(out / EXPERIMENT_FILE, yaml.safe_dump(record, sort_keys=False))
    return _finish_seeds(out, record, progress, announce)


def resume_seeds(out: Path, progress: Callable[..., Any] | None = None,
                 announce: Callable[[Run], None] | None = None) -> Path:
    """Finish a multi-seed experiment: resume started seeds, start the missing ones."""
    record = yaml.safe_load((Path(out) / EXPERIMENT_FILE).read_text()) or {}
    return _finish_seeds(Path(out), record, progress, announce)


def _finish_seeds(out: Path, record: dict[str, Any], progress: Callable[..., Any] | None,
                  announce: Callable[[Run], None] | None) -> Path:
    seeds = [int(s) for s in (record["seeds"] if isinstance(record["seeds"], list) else str(record["seeds"]).split(","))]
    for seed, run_dir in seed_dirs(out, seeds).items():
        if (run_dir / "config.yaml").exists():
            run = resume_run(run_dir, progress)
        else:
            run = start_run({**record, "seed": seed, "seeds": [], "out": str(run_dir)}, progress)
        if announce is not None:
            announce(run)
        run.execute()
    report.write_comparison([out], out)
    return out


def _plugin_names(values: dict[str, Any]) -> list[str]:
    names = values.get("plugins") or []
    if isinstance(names, str):
        names = [p.strip() for p in names.split(",") if p.strip()]
    return list(names)
