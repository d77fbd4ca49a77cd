"""Plots a user can read: one point per epoch (the last included), a few labelled log ticks,
legends clear of the data and complete, titles naming method, dataset and steps."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from toolbox.sparsity import plots
from toolbox.sparsity.plots import controller_figure, log_ticks, plot_title


def epochs_drawn(ax) -> set[float]:
    """The x of every point drawn on ``ax`` (lines and scatter markers)."""
    xs = {float(x) for line in ax.get_lines() for x in line.get_xdata() if line.get_marker() not in ("None", "")}
    for collection in ax.collections:
        xs |= {float(x) for x, _ in collection.get_offsets()}
    return xs


def test_the_sparsity_plot_has_a_point_per_epoch_including_the_last_held_at_zero() -> None:
    # target mode: the schedule ends before the last epoch, whose effective strength is 0
    fig = controller_figure([5.1, 6.8, 0.0], [0.0, 0.5, 0.5], 0.5, "SST on synthetic (cifar_resnet20), step 1 of 2")
    top, bottom = fig.axes
    assert epochs_drawn(top) == {1.0, 2.0, 3.0}
    assert epochs_drawn(bottom) == {1.0, 2.0, 3.0}
    assert "s = 0 (selection held at 0)" in [t.get_text() for t in bottom.get_legend().get_texts()]
    labels = [label for label in (t.get_text() for t in bottom.get_yticklabels()) if label]
    assert 2 <= len(labels) <= 5, labels


@pytest.mark.parametrize("low, high", [(5.1, 6.8), (1e-6, 1e3), (0.02, 0.9), (3e-4, 3e-4)])
def test_log_ticks_are_few_and_inside_the_range(low: float, high: float) -> None:
    ticks = log_ticks(low, high)
    assert 2 <= len(ticks) <= 5, ticks
    assert all(low / 1.6 <= t <= high * 1.6 for t in ticks), ticks  # every one inside the drawn range


def test_the_gamma_histogram_legend_is_outside_the_bars_and_the_title_names_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolbox.models import build_model
    from toolbox.sparsity import channels as ch

    saved = []
    monkeypatch.setattr(plots, "atomic_savefig", lambda fig, path, **kw: saved.append(fig))
    model = build_model("cifar_resnet20", 10, 3)
    graph = ch.channel_groups(model, (3, 16, 16))
    selection = [torch.zeros(g.size, dtype=torch.bool) for g in graph.groups]
    title = "|gamma| after " + plot_title("SST", SimpleNamespace(dataset="synthetic", arch="cifar_resnet20", steps=4), 1)
    plots.plot_gamma_histogram(model, graph, selection, 0.01, tmp_path / "g.png", title)
    (ax,) = saved[0].axes
    saved[0].canvas.draw()
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1  # beside the axes: never over a bar
    assert ax.get_title() == "|gamma| after SST on synthetic (cifar_resnet20), step 1 of 4"
