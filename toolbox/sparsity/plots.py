"""The plots of a sparsity phase: |gamma| per filter against the threshold, and the controller's
achieved ratio and strength per epoch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from toolbox.sparsity import channels as ch
from toolbox.storage.atomic import atomic_savefig

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def log_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """At most ``most`` round ticks (1, 2, 5 x 10^k, else 1, 3 x 10^k, else whole decades, thinned)
    inside ``[low / 1.5, high * 1.5]`` (both positive), never fewer than two: readable labels on a
    log axis."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    ticks: list[float] = []
    for subs in ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,)):
        ticks = [float(f"{m * 10.0 ** k:.1g}") for k in range(first, last + 1) for m in subs
                 if low / 1.5 <= m * 10.0 ** k <= high * 1.5]
        if 2 <= len(ticks) <= most:
            return ticks
    if len(ticks) > most:  # many decades: every n-th
        return ticks[::math.ceil(len(ticks) / most)]
    return [float(f"{low:.2g}"), float(f"{high:.2g}")] if high > low * 1.01 else [float(f"{low / 1.4:.2g}"),
                                                                                   float(f"{high * 1.4:.2g}")]


def controller_figure(s_history: list[float], ratio_history: list[float], target: float, title: str) -> "Figure":
    """The figure of :func:`plot_controller`: one point per epoch in both panels, the last included.

    On the log-scaled strength panel an epoch with s = 0 (target mode holds the selection at 0
    once its schedule ends, usually the last epochs) is a hollow marker on the panel's floor,
    labelled in the legend, instead of a point the log scale would drop.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    epochs = list(range(1, len(ratio_history) + 1))
    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(epochs, [100 * r for r in ratio_history], marker="o", label="achieved")
    top.axhline(100 * target, color="k", linestyle="--", label=f"target {100 * target:.1f}%")
    top.set_ylabel("filters below threshold (%)")
    top.set_ylim(0, max([100 * target, *(100 * r for r in ratio_history)]) * 1.15 + 1)
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8, loc="lower right")
    s_epochs = epochs[:len(s_history)] if len(s_history) <= len(epochs) else list(range(1, len(s_history) + 1))
    positive = [(e, v) for e, v in zip(s_epochs, s_history) if v > 0]
    if positive:
        low, high = min(v for _, v in positive), max(v for _, v in positive)
        zeros = [e for e, v in zip(s_epochs, s_history) if v <= 0]
        bottom.set_yscale("log")
        bottom.plot(*zip(*positive), marker="o", color="tab:orange", label="s")
        if zeros:
            floor = low / 3
            bottom.scatter(zeros, [floor] * len(zeros), marker="o", facecolors="none", edgecolors="tab:orange",
                           label="s = 0 (selection held at 0)")
            low = floor
        bottom.set_ylim(low / 1.6, high * 1.6)
        bottom.yaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
        bottom.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
        bottom.yaxis.set_minor_locator(NullLocator())
        if zeros:
            bottom.legend(fontsize=8, loc="best")
    else:
        bottom.plot(s_epochs, s_history, marker="o", color="tab:orange")
    bottom.set_ylabel("effective strength s")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def plot_controller(s_history: list[float], ratio_history: list[float], target: float, path: Path,
                    title: str) -> None:
    """Achieved ratio (top panel, target as a dashed line) and effective strength s (bottom panel,
    log scale when any is positive) per epoch of a sparsity phase, written to ``path``
    (:func:`controller_figure`)."""
    atomic_savefig(controller_figure(s_history, ratio_history, target, title), path, dpi=100, bbox_inches="tight")


def plot_title(label: str, options: Any, step: int, extra: str = "") -> str:
    """``SST on synthetic (cifar_resnet20), step 1 of 4`` plus ``extra``: what a sparsity plot shows."""
    dataset, arch, steps = (getattr(options, name, None) for name in ("dataset", "arch", "steps"))
    where = f" on {dataset}" if dataset else ""
    model = f" ({arch})" if arch else ""
    of = f" of {steps}" if steps else ""
    return f"{label}{where}{model}, step {step}{of}{extra}"
