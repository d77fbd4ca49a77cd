"""A new user's first hour: the README's main command on a machine without Fashion-MNIST.

Fashion-MNIST is downloaded with torchvision's downloader from a local HTTP server (fabricated
files, checksums verified), or, offline, ``auto`` falls back to the synthetic shapes and says so.
No test touches the network: the download mirror is always a local address.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fabricate import write_fashion_mnist
from typer.testing import CliRunner

import toolbox.data.fashion_mnist as fashion_mnist
from toolbox.cli.commands import app
from toolbox.data import DatasetNotFoundError, load_dataset, synthetic
from toolbox.data.auto import FALLBACK_SOURCE, load_run_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "configs" / "demo.yaml"
#: A local port nothing listens on: downloads from it fail at once, like an offline machine's.
CLOSED_MIRROR = "http://127.0.0.1:9/"


@pytest.fixture(autouse=True)
def _no_fashion_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No system copy of Fashion-MNIST, no $TOOLBOX_DATA, and a download mirror that refuses."""
    import torchvision.datasets

    monkeypatch.setenv(fashion_mnist.SYSTEM_DIRS_ENV, "")
    monkeypatch.delenv("TOOLBOX_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [CLOSED_MIRROR])


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local HTTP server for the download folder it yields; torchvision's FashionMNIST is pointed
    at it (the checksums are set when the files are written there, see :func:`serve_files`)."""
    import torchvision.datasets

    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    yield folder
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging every request to stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Say nothing."""


def serve_files(folder: Path, monkeypatch: pytest.MonkeyPatch, corrupt: str | None = None) -> None:
    """Fabricated Fashion-MNIST archives in ``folder`` with torchvision's resources (name, md5) set
    to theirs; ``corrupt`` names an archive served with other bytes than its checksum says."""
    import torchvision.datasets

    write_fashion_mnist(folder, n_train=30, n_test=10)
    resources = []
    for path in sorted(folder.glob("*.gz")):
        resources.append((path.name, hashlib.md5(path.read_bytes()).hexdigest()))
        if path.name == corrupt:
            path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)


# ----------------------------------------------------------------------------- where it looks
def test_system_folders_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "system"
    write_fashion_mnist(system)
    monkeypatch.setenv(fashion_mnist.SYSTEM_DIRS_ENV, f"{tmp_path / 'nothing'}:{system}")
    assert fashion_mnist.system_dirs() == [tmp_path / "nothing", system]
    assert load_dataset("fashion_mnist", tmp_path / "root", download=False).source == str(system)
    monkeypatch.setenv(fashion_mnist.SYSTEM_DIRS_ENV, "")
    assert fashion_mnist.system_dirs() == []
    with pytest.raises(DatasetNotFoundError, match="downloading was disabled"):
        load_dataset("fashion_mnist", tmp_path / "root", download=False)
    monkeypatch.delenv(fashion_mnist.SYSTEM_DIRS_ENV)
    assert fashion_mnist.system_dirs() == [fashion_mnist.SYSTEM_DIR]


# ----------------------------------------------------------------------------- download
def test_auto_downloads_fashion_mnist_with_checksums(mirror: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    serve_files(mirror, monkeypatch)
    root = tmp_path / "data"
    data = load_run_dataset("auto", root, steps=2, per_class=1)
    assert data.name == "fashion_mnist" and data.source == str(root / "FashionMNIST" / "raw")
    assert data.train_x.shape == (30, 1, 32, 32) and data.test_x.shape == (10, 1, 32, 32)
    assert load_dataset("fashion_mnist", root, download=False).train_x.shape[0] == 30  # stays there


def test_a_corrupt_download_is_deleted_and_auto_falls_back(mirror: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    serve_files(mirror, monkeypatch, corrupt="t10k-images-idx3-ubyte.gz")
    root = tmp_path / "data"
    data = load_run_dataset("auto", root, steps=4, per_class=125)
    assert data.name == "synthetic" and data.source == FALLBACK_SOURCE
    assert torch.bincount(data.train_y).tolist() == [500] * 10
    assert not (root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz").exists()
    assert "t10k-images-idx3-ubyte.gz" in caplog.text and "SYNTHETIC" in caplog.text


def test_offline_download_fails_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    problem = fashion_mnist.fetch_files(tmp_path / "data")
    assert problem is not None and "train-images-idx3-ubyte.gz" in problem
    assert time.perf_counter() - start < 5


# ----------------------------------------------------------------------------- the synthetic set
def test_synthetic_grows_to_what_the_run_needs() -> None:
    assert synthetic.sizes_for_run(4, 125) == (500, 100)
    assert synthetic.sizes_for_run(4, 125, val_per_class=20) == (520, 104)
    assert synthetic.sizes_for_run(3, None) == (synthetic.TRAIN_PER_CLASS, synthetic.TEST_PER_CLASS)
    assert synthetic.sizes_for_run(2, 5) == (synthetic.TRAIN_PER_CLASS, synthetic.TEST_PER_CLASS)
    assert synthetic.sizes_for_run(4, 100000)[0] == synthetic.MAX_TRAIN_PER_CLASS  # then the split refuses
    start = time.perf_counter()
    big = synthetic.generate(500, 100)
    assert time.perf_counter() - start < 5  # ~0.5 s on a quiet core
    assert big.train_x.shape == (5000, 3, 16, 16) and big.test_x.shape == (1000, 3, 16, 16)
    assert torch.bincount(big.train_y).tolist() == [500] * 10
    again = synthetic.generate(60, 100)
    assert torch.equal(big.test_x, again.test_x)  # the test set depends only on its own size
    assert torch.equal(big.train_x, synthetic.generate(500, 100).train_x)
    assert "500 train + 100 test" in big.source


def test_synthetic_classes_need_more_than_a_template_or_brightness() -> None:
    """Random position, scale, rotation and colours: neither the class-mean image nor the mean
    brightness tells the classes apart well (measured 29 % and 20 %; chance 10 %)."""
    data = synthetic.generate(200, 50)
    train, test = data.train_x.float().flatten(1), data.test_x.float().flatten(1)
    templates = torch.stack([train[data.train_y == c].mean(0) for c in range(10)])
    assert (torch.cdist(test, templates).argmin(1) == data.test_y).float().mean() < 0.4
    brightness, seen = train.mean(1), test.mean(1)
    levels = torch.stack([brightness[data.train_y == c].mean() for c in range(10)])
    assert ((seen[:, None] - levels[None]).abs().argmin(1) == data.test_y).float().mean() < 0.3


# ----------------------------------------------------------------------------- the main command
def run_demo(tmp_path: Path, *overrides: str):
    """``toolbox run --config examples/configs/demo.yaml`` through the CLI, with no Fashion-MNIST
    anywhere and every download refused."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["run", "--config", str(DEMO), "--data-root", str(tmp_path / "data"),
                                      "--out", str(out), *overrides])
    return result, out


def test_the_demo_command_falls_back_to_synthetic_and_says_so(tmp_path: Path) -> None:
    result, out = run_demo(tmp_path, "--plugins", "finetune", "--steps", "2", "--per-class", "40",
                           "--epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "could not be downloaded" in result.output and "SYNTHETIC" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["dataset_source"] == FALLBACK_SOURCE
    assert results["config"]["dataset"] == "synthetic"
    assert FALLBACK_SOURCE in (out / "results.md").read_text()
    assert torch.load(out / "checkpoints" / "step2_learn.pt", weights_only=True)["options"]["per_class"] == 40
    evaluated = CliRunner().invoke(app, ["eval", str(out / "checkpoints" / "step2_learn.pt"), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output  # the same (sized) synthetic test set as the run's
    assert f"top-1 {results['steps'][-1]['top1']:.2f}%" in evaluated.output


@pytest.mark.slow
def test_the_demo_config_learns_the_synthetic_set_offline(tmp_path: Path) -> None:
    """The README's main command, unchanged, on a machine without Fashion-MNIST (chance: 10 %)."""
    result, out = run_demo(tmp_path)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["dataset_source"] == FALLBACK_SOURCE
    assert [s["step"] for s in results["steps"]] == [1, 2, 3, 4]
    assert results["steps"][-1]["top1"] >= 50.0, [s["top1"] for s in results["steps"]]
