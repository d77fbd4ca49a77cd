"""What the terminal shows: information as plain lines, warnings labelled; the results table whole
at 80 columns; ``toolbox report`` on one run as one table."""

from __future__ import annotations

import logging

import pytest

from toolbox.cli import console as cli_console
from toolbox.run.results import rows_markdown


def test_information_is_plain_and_warnings_are_labelled() -> None:
    formatter = cli_console.ConsoleFormatter()
    record = lambda level, text: logging.LogRecord("toolbox", level, __file__, 1, text, None, None)  # noqa: E731
    assert formatter.format(record(logging.INFO, "compact: removed 2 of 8 filters")) == "compact: removed 2 of 8 filters"
    assert formatter.format(record(logging.WARNING, "low disk")) == "Warning: low disk"
    assert formatter.format(record(logging.ERROR, "failed")) == "Error: failed"


def test_the_results_table_fits_80_columns(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_console.console, "width", 80)
    steps = [dict(step=k, phases=[{"phase": p} for p in ("learn", "sparsify", "compact")], top1=50.1, top5=90.0,
                  served={"top1": 49.0, "phase": "compact"}, train_seconds=1234.5, params=1_234_567, sparsity=0.512)
             for k in (1, 2)]
    cli_console.print_results({"dataset_source": "synthetic (generated)", "steps": steps})
    output = capsys.readouterr().out
    assert "…" not in output and max(len(line) for line in output.splitlines()) <= 80
    for word in ("learn", "sparsify", "compact", "1,234,567", "1234.5", "49.00"):
        assert word in output, word


def test_a_report_on_one_run_is_one_table_without_a_zero_std() -> None:
    rows = [dict(method="sst+aod", seeds=1, step=k, top1_mean=50.0 + k, top1_std=0.0, top5_mean=90.0, params=10,
                 macs=2e6, sparsity=None, train_seconds=1.0) for k in (1, 2, 3)]
    text = rows_markdown(rows)
    assert text.count("| step |") == 1 and "±" not in text and "### Step" not in text
    assert "| 3 | 53.00 |" in text
    several = [{**r, "seeds": 3, "top1_std": 0.5} for r in rows]
    assert "53.00 ± 0.50" in rows_markdown(several) and rows_markdown(several).count("| step |") == 1


def test_the_top1_plot_names_method_and_dataset_and_its_phase_points(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    from toolbox.run.results import plot_top1

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    steps = [dict(step=k, top1=50.0 + k, phases=[{"phase": "learn", "top1": 49.0}, {"phase": "sparsify", "top1": 48.0}])
             for k in (1, 2)]
    plot_top1({"config": {"plugins": ["sst", "aod"], "dataset": "fashion_mnist", "arch": "cifar_resnet20"},
               "steps": steps}, tmp_path / "top1.png")
    (ax,) = figures[0].axes
    assert ax.get_title() == "sst+aod on fashion_mnist (cifar_resnet20), 2 steps"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["end of step", "after the learn phase",
                                                                  "after the sparsify phase"]
    assert (tmp_path / "top1.png").stat().st_size > 0


def test_a_run_directory_is_named_after_the_dataset_auto_resolved_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from toolbox.data import auto
    from toolbox.data.datasets import DatasetNotFoundError
    from toolbox.options import RunOptions
    from toolbox.run.directory import default_run_dir

    def missing(*args: object, **kwargs: object) -> None:
        raise DatasetNotFoundError("no Fashion-MNIST here")

    monkeypatch.setattr(auto, "load_dataset", missing)
    assert default_run_dir(RunOptions(dataset="auto")).name.endswith("-synthetic-cifar_resnet20")
    found = object()
    monkeypatch.setattr(auto, "load_dataset", lambda *args, **kwargs: found)
    assert default_run_dir(RunOptions(dataset="auto", data_root="/d")).name.endswith("-fashion_mnist-cifar_resnet20")
    assert auto.load_run_dataset("auto", "/d", 4, None) is found  # loaded once, reused by the run
    assert default_run_dir(RunOptions(dataset="cifar100")).name.endswith("-cifar100-cifar_resnet20")


def test_the_data_is_named_in_words_with_where_it_came_from() -> None:
    from toolbox.data.auto import FALLBACK_SOURCE
    from toolbox.data.titles import describe_data

    assert describe_data("fashion_mnist", "/usr/share/datasets/fashion-mnist") == (
        "Fashion-MNIST (real, /usr/share/datasets/fashion-mnist)")
    assert describe_data("synthetic", FALLBACK_SOURCE).startswith("synthetic shapes (no Fashion-MNIST found")
    assert describe_data("synthetic", "synthetic (generated, 8 train + 4 test images per class)") == (
        "synthetic shapes (generated, 8 train + 4 test images per class)")
    assert describe_data("imagefolder", "/data/shop") == "image folders (/data/shop)"


def test_a_run_prints_its_data_first(tmp_path) -> None:
    from typer.testing import CliRunner

    from toolbox.cli.commands import app

    result = CliRunner().invoke(app, ["run", "--dataset", "synthetic", "--plugins", "sst", "--steps", "1", "--epochs", "1",
                                      "--per-class", "4", "--batch-size", "32", "--tensorboard", "false",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("data: synthetic shapes (generated"), result.output
