"""The plots of a sparsity phase: |gamma| per filter against the threshold, and the controller's
achieved ratio and strength per epoch."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from toolbox.sparsity import channels as ch
from toolbox.storage.atomic import atomic_savefig


def plot_gamma_histogram(model: nn.Module, graph: ch.ChannelGraph, selection: list[torch.Tensor],
                         threshold: float, path: Path, title: str) -> None:
    """Histogram of |gamma| (log scale) of selected and kept filters, written to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    peaks = torch.cat(ch.unit_max_gamma(model, graph)).cpu() if graph.groups else torch.zeros(0)
    sel = torch.cat([s.cpu() for s in selection]) if selection else torch.zeros(0, dtype=torch.bool)
    floor = threshold / 100
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = max(float(peaks.max()) if peaks.numel() else 1.0, threshold) * 1.1
    bins = torch.logspace(math.log10(floor), math.log10(top), 50).numpy()
    ax.hist(peaks[~sel].clamp(min=floor).numpy(), bins=bins, alpha=0.7, label="kept")
    ax.hist(peaks[sel].clamp(min=floor).numpy(), bins=bins, alpha=0.7, label="selected (unimportant)")
    ax.axvline(threshold, color="k", linestyle="--", label="threshold")
    ax.set_xscale("log")
    ax.set_xlabel("max |gamma| per filter (values below the x range are piled at its left edge)")
    ax.set_ylabel("filters")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the bars, never on them
    atomic_savefig(fig, path, dpi=100, bbox_inches="tight")


def plot_controller(s_history: list[float], ratio_history: list[float], target: float, path: Path,
                    title: str) -> None:
    """Achieved ratio (top panel, target as a dashed line) and effective strength s (bottom panel,
    log scale when any is positive; epochs with s = 0 are left out there) per epoch of a sparsity
    phase, written to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    epochs = list(range(1, len(ratio_history) + 1))
    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(epochs, [100 * r for r in ratio_history], marker="o", label="achieved")
    top.axhline(100 * target, color="k", linestyle="--", label=f"target {100 * target:.1f}%")
    top.set_ylabel("filters below threshold (%)")
    top.set_ylim(0, max([100 * target, *(100 * r for r in ratio_history)]) * 1.15 + 1)
    top.set_title(title)
    top.legend()
    bottom.plot(epochs[:len(s_history)], s_history, marker="o", color="tab:orange")
    if any(v > 0 for v in s_history):
        bottom.set_yscale("log", nonpositive="mask")  # s = 0 (selection held at 0) is not drawn
        bottom.yaxis.set_major_locator(LogLocator(numticks=4))  # a few decades, labelled
        bottom.yaxis.set_minor_formatter(NullFormatter())
    bottom.set_ylabel("effective strength s")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    atomic_savefig(fig, path, dpi=100, bbox_inches="tight")
