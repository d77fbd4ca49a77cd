"""TensorBoard event files of a run, in ``RUN_DIR/tb/`` (``tensorboard --logdir runs``).

What a run writes (rank 0 only; ``--tensorboard false`` writes nothing):

* ``epoch/<name>`` after every epoch: each loss term (``ce``, ``loss``, the plugins' terms),
  ``lr``, ``images_per_second``, ``train_top1`` and any other number of the epoch's metrics;
* ``<phase>/<name>`` after every phase: ``test_top1``, ``test_top5``, ``test_loss``,
  ``val_top1`` / ``val_top5`` (with ``--val-per-class``), ``sparsity``, ``params``, ``macs``,
  ``train_seconds`` and the plugins' phase metrics;
* histograms ``bn_gamma/all`` and ``bn_gamma/<layer>`` of BatchNorm |gamma| after every
  phase that reports sparsity (a sparsity plugin's);
* at the end of the run an hparams summary (every option) with ``hparams/*`` metrics (final
  and mean test top-1, final params, MACs, sparsity), so TensorBoard's HPARAMS tab compares runs.

Every point's x value is the run's **global epoch**: epochs completed so far over the run's phases
in training order, a phase without epochs counting as one (:func:`phase_offsets`). It does not
depend on where a run was killed, so a resumed run writes the same steps an uninterrupted one
would, and opens its writer with ``purge_step`` at the first step it will write: TensorBoard then
discards the points the killed process wrote after its last checkpoint, and no step appears twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from toolbox.models.modules import batchnorms

TB_DIR = "tb"
# record keys renamed for TensorBoard: the record's top1/top5 are the test set's
RENAMED = {"top1": "test_top1", "top5": "test_top5"}
# record keys that are not measurements
NOT_SCALARS = ("phase", "epochs", "images")

PhaseKey = tuple[int, str]


def phase_offsets(order: Iterable[PhaseKey], epochs: Callable[[str], int]) -> tuple[dict[PhaseKey, int], int]:
    """Global epoch before each (step, phase) of ``order``, and the run's total.

    A phase takes ``max(epochs(phase), 1)`` global epochs, so every phase ends at a distinct step
    (a phase without epochs still gets its own point for its test accuracy).
    """
    offsets: dict[PhaseKey, int] = {}
    total = 0
    for key in order:
        offsets[key] = total
        total += max(int(epochs(key[1])), 1)
    return offsets, total


def hparam_values(options: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The run's options as TensorBoard hparams: nested mappings flattened with a dot (plugin
    options by their own names), lists joined with commas, everything else that is not a number,
    bool or string as text; the run directory is left out (TensorBoard names the run by it)."""
    values: dict[str, bool | int | float | str] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                put(f"{name}.{key}" if name else str(key), item)
        elif isinstance(value, (list, tuple)):
            values[name] = ",".join(map(str, value))
        elif isinstance(value, (bool, int, float, str)):
            values[name] = value
        else:
            values[name] = str(value)

    for key, value in options.items():
        if key == "out":
            continue
        put("" if key == "plugin" else key, value)
    return values


def summary_metrics(steps: list[dict[str, Any]]) -> dict[str, float]:
    """The hparams metrics of a run's per-step results (empty when no step is done)."""
    if not steps:
        return {}
    last = steps[-1]
    metrics = {"hparams/final_top1": last["top1"], "hparams/final_top5": last.get("top5"),
               "hparams/mean_top1": sum(s["top1"] for s in steps) / len(steps),
               "hparams/final_params": last["params"], "hparams/final_macs": last["macs"],
               "hparams/train_seconds": sum(s["train_seconds"] for s in steps)}
    if last.get("sparsity") is not None:
        metrics["hparams/final_sparsity"] = last["sparsity"]
    return {k: float(v) for k, v in metrics.items() if v is not None}  # no top-5 for five classes or fewer


def _numbers(values: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """The (name, value) pairs of ``values`` that are real numbers (bools excluded)."""
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, float(value)


class RunBoard:
    """The TensorBoard writer of one run; every method does nothing when ``log_dir`` is ``None``.

    Args:
        log_dir: The event-file folder (``RUN_DIR/tb``), or ``None`` for no TensorBoard output
            (``--tensorboard false``, or a process other than rank 0).
        order: Every (step, phase) of the run in training order.
        epochs: Epochs of a phase, by name (``RunOptions.epochs_for``).
        purge_step: The first global epoch this process will write; TensorBoard drops the points
            at and after it that an earlier (killed) process wrote.
    """

    def __init__(self, log_dir: Path | None, order: Iterable[PhaseKey], epochs: Callable[[str], int],
                 purge_step: int | None = None) -> None:
        self.offsets, self.total = phase_offsets(order, epochs)
        self.epochs = epochs
        self.writer: Any = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported only when used (~0.5 s)

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @classmethod
    def open(cls, run_dir: Path | None, order: list[PhaseKey], epochs: Callable[[str], int],
             done: set[PhaseKey], partial: Mapping[str, Any] | None) -> "RunBoard":
        """The board of a run about to train what is not ``done`` (``partial``: the checkpoint of
        the unfinished phase it continues, if any); ``run_dir`` ``None`` writes nothing.

        ``purge_step`` is the first point still to be written: the next epoch of the first
        unfinished phase, or the hparams point when every phase is done.
        """
        board = cls(None, order, epochs)
        if run_dir is None:
            return board
        pending = [key for key in order if key not in done]
        if not pending:
            purge = board.total + 1
        else:
            step, phase = pending[0]
            resumes = partial is not None and (int(partial["step"]), str(partial["phase"])) == (step, phase)
            purge = board.global_epoch(step, phase, (int(partial["epochs_done"]) if resumes else 0) + 1)
        return cls(Path(run_dir) / TB_DIR, order, epochs, purge_step=purge)

    def global_epoch(self, step: int, phase: str, epoch: int) -> int:
        """The x value of epoch ``epoch`` (1-based) of ``phase`` in ``step``."""
        return self.offsets.get((step, phase), 0) + epoch

    def phase_end(self, step: int, phase: str) -> int:
        """The x value of the end of ``phase`` in ``step``."""
        return self.global_epoch(step, phase, max(int(self.epochs(phase)), 1))

    def epoch(self, step: int, phase: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Every number of one epoch's metrics as ``epoch/<name>`` (``epoch`` is 1-based)."""
        if self.writer is None:
            return
        x = self.global_epoch(step, phase, epoch)
        for name, value in _numbers(metrics):
            self.writer.add_scalar(f"epoch/{name}", value, x)
        self.writer.flush()

    def phase(self, step: int, phase: str, record: Mapping[str, Any], model: nn.Module) -> None:
        """A phase's record as ``<phase>/<name>``; after a phase that reports sparsity (a sparsity
        plugin's), BN |gamma| histograms."""
        if self.writer is None:
            return
        x = self.phase_end(step, phase)
        for name, value in _numbers({k: v for k, v in record.items() if k not in NOT_SCALARS}):
            self.writer.add_scalar(f"{phase}/{RENAMED.get(name, name)}", value, x)
        if record.get("sparsity") is not None:
            self.bn_gamma_histograms(model, x)
        self.writer.flush()

    def review(self, step: int, last_phase: str, entry: Mapping[str, Any]) -> None:
        """What step ``step`` changed and its promotion, at the end of its last phase:
        ``update/nfr``, ``update/pfr``, ``update/class_top1_change/<class>``, ``promotion/promoted``
        (1 or 0) and the gate's validation numbers as ``promotion/<name>``."""
        if self.writer is None:
            return
        x = self.phase_end(step, last_phase)
        update, promotion = entry.get("update"), entry.get("promotion")
        if update:
            self.writer.add_scalar("update/nfr", update["nfr"], x)
            self.writer.add_scalar("update/pfr", update["pfr"], x)
            for name, values in update["per_class"].items():
                if values["change"] is not None:
                    self.writer.add_scalar(f"update/class_top1_change/{name}", values["change"], x)
        if promotion:
            self.writer.add_scalar("promotion/promoted", float(promotion["promoted"]), x)
            for name, value in _numbers(promotion.get("numbers") or {}):
                self.writer.add_scalar(f"promotion/{name}", value, x)
        self.writer.flush()

    def bn_gamma_histograms(self, model: nn.Module, x: int) -> None:
        """Histograms of |gamma| of every BatchNorm layer, one per layer and ``bn_gamma/all``."""
        gammas = []
        for name, bn in batchnorms(model, affine=True).items():
            gamma = bn.weight.detach().abs().float().cpu()
            gammas.append(gamma)
            self.writer.add_histogram(f"bn_gamma/{name}", gamma, x)
        if gammas:
            self.writer.add_histogram("bn_gamma/all", torch.cat(gammas), x)

    def hparams(self, options: Mapping[str, Any], steps: list[dict[str, Any]]) -> None:
        """The hparams summary (options and final metrics), one step after the run's last point."""
        metrics = summary_metrics(steps)
        if self.writer is None or not metrics:
            return
        from torch.utils.tensorboard.summary import hparams

        x = self.total + 1
        for summary in hparams(hparam_values(options), metrics):
            self.writer.file_writer.add_summary(summary, x)
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, x)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
