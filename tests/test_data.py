"""Tests of toolbox.data: loaders on fabricated files, shards, augmentation and BatchLoader."""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fabricate import write_cifar100 as _write_cifar
from fabricate import write_fashion_mnist as _write_fashion

import toolbox.data.fashion_mnist as fashion_mnist
import toolbox.data.tiny_imagenet as tiny_imagenet
from toolbox.data import (
    BatchLoader,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageData,
    augment_batch,
    list_datasets,
    load_dataset,
    make_generator,
    normalize_batch,
    resolve_data_root,
    split_shards,
)
from toolbox.errors import UsageError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network, no $TOOLBOX_DATA, and a private home directory for every test."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("TOOLBOX_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _no_torchvision_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make torchvision's dataset downloads fail like offline; returns the calls made."""
    import torchvision.datasets

    calls: list[str] = []

    def fail(name: str):
        def dataset(*args: object, **kwargs: object) -> None:
            calls.append(name)
            raise RuntimeError("Error downloading (offline)")

        return dataset

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fail("CIFAR100"))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fail("FashionMNIST"))
    return calls


def _assert_one_sentence_naming(message: str, folder: Path) -> None:
    assert str(folder) in message
    assert "--data-root" in message and "TOOLBOX_DATA" in message
    assert message.endswith(".") and "\n" not in message
    assert message.count(". ") == 0  # one sentence


# ----------------------------------------------------------------------------- registry, roots


def test_list_datasets_and_unknown_name() -> None:
    assert list_datasets() == ["cifar100", "fashion_mnist", "imagefolder", "synthetic", "tiny_imagenet"]
    with pytest.raises(ValueError, match=r"'imagenet21k'.*cifar100, fashion_mnist, imagefolder, synthetic, tiny_imagenet"):
        load_dataset("imagenet21k")


def test_register_dataset_gets_resolved_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import toolbox.data.datasets as datasets

    monkeypatch.setattr(datasets, "_REGISTERED", {})
    seen: list[tuple[Path, bool]] = []

    def loader(root: Path, download: bool) -> ImageData:
        seen.append((root, download))
        return load_dataset("synthetic")

    datasets.register_dataset("mine", loader)
    assert "mine" in list_datasets()
    monkeypatch.setenv("TOOLBOX_DATA", str(tmp_path))
    assert load_dataset("mine", download=False).name == "synthetic"
    assert seen == [(tmp_path, False)]


def test_resolve_data_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert resolve_data_root(None) == home / ".cache" / "toolbox" / "data"
    monkeypatch.setenv("TOOLBOX_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_root("~/x") == home / "x"


# ----------------------------------------------------------------------------- CIFAR-100


def test_cifar100_loads_official_layout(tmp_path: Path) -> None:
    arrays = _write_cifar(tmp_path)
    data = load_dataset("cifar100", tmp_path, download=False)
    assert isinstance(data, ImageData) and data.name == "cifar100"
    assert data.train_x.shape == (300, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (100, 3, 32, 32) and data.test_y.dtype == torch.int64
    assert data.train_x.is_contiguous()
    assert data.train_y.tolist() == [c for c in range(100) for _ in range(3)]
    assert data.num_classes == 100 and data.in_chans == 3 and data.image_size == 32
    assert len(data.mean) == len(data.std) == 3
    assert data.source == str(tmp_path / "cifar-100-python")
    # rows are R, G, B planes of 32 x 32, row-major
    row = arrays["train"][7]
    assert torch.equal(data.train_x[7, 1], torch.from_numpy(row[1024:2048].reshape(32, 32)))


def test_cifar100_missing_raises_with_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _no_torchvision_download(monkeypatch)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", tmp_path / "nothing")
    assert calls == ["CIFAR100"]
    message = str(info.value)
    _assert_one_sentence_naming(message, tmp_path / "nothing" / "cifar-100-python")
    assert "could not be downloaded" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, UsageError)
    calls.clear()
    with pytest.raises(DatasetNotFoundError, match="downloading was disabled"):
        load_dataset("cifar100", tmp_path / "nothing", download=False)
    assert calls == []


def test_cifar100_rejects_unsafe_pickle(tmp_path: Path) -> None:
    _write_cifar(tmp_path, 1, 1)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.getcwd, ())

    with open(tmp_path / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(DatasetFormatError, match="corrupt or not a CIFAR pickle"):
        load_dataset("cifar100", tmp_path, download=False)


# ----------------------------------------------------------------------------- Tiny ImageNet

WNIDS = ["n02124075", "n01443537", "n09999999"]  # wnids.txt order; labels follow sorted order
COLORS = {"n01443537": (200, 30, 30), "n02124075": (30, 200, 30), "n09999999": (30, 30, 200)}


def _write_tiny(root: Path) -> Path:
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        boxes = []
        for k in range(2):
            name = f"{wnid}_{k}.JPEG"
            Image.new("RGB", (64, 64), COLORS[wnid]).save(images / name, quality=95)
            boxes.append(f"{name}\t0\t0\t63\t63")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    # one grayscale training JPEG (as in the real set)
    Image.new("L", (64, 64), 128).save(folder / "train" / "n09999999" / "images" / "n09999999_2.JPEG")
    lines = []
    for k, wnid in enumerate(["n09999999", "n01443537", "n02124075", "n01443537"]):
        name = f"val_{k}.JPEG"
        Image.new("RGB", (64, 64), COLORS[wnid]).save(folder / "val" / "images" / name, quality=95)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_imagenet_loads_and_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = _write_tiny(tmp_path)
    data = load_dataset("tiny_imagenet", tmp_path, download=False)
    assert data.train_x.shape == (7, 3, 64, 64) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (4, 3, 64, 64) and data.test_y.dtype == torch.int64
    assert data.num_classes == 3 and data.source == str(folder)
    assert data.train_y.tolist() == [0, 0, 1, 1, 2, 2, 2]  # sorted wnids
    assert data.test_y.tolist() == [2, 0, 1, 0]
    sorted_wnids = sorted(WNIDS)
    for i in range(6):
        expected = torch.tensor(COLORS[sorted_wnids[int(data.train_y[i])]], dtype=torch.float32)
        mean_rgb = data.train_x[i].float().mean(dim=(1, 2))
        assert torch.allclose(mean_rgb, expected, atol=6), (i, mean_rgb)
    gray = data.train_x[6]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert abs(gray.float().mean().item() - 128) < 3
    assert (folder / tiny_imagenet.CACHE_NAME).is_file()

    import PIL.Image

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(PIL.Image, "open", no_decode)
    again = load_dataset("tiny_imagenet", tmp_path, download=False)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)


def test_tiny_imagenet_missing_raises_with_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import urllib.request

    urls: list[str] = []

    def offline(url: str, *args: object, **kwargs: object) -> None:
        urls.append(url)
        raise OSError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("tiny_imagenet", tmp_path)
    assert urls == [tiny_imagenet.URL]
    _assert_one_sentence_naming(str(info.value), tmp_path / "tiny-imagenet-200")


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_gzipped_idx_padded(tmp_path: Path) -> None:
    arrays = _write_fashion(tmp_path / "fashion_mnist")
    data = load_dataset("fashion_mnist", tmp_path, download=False)
    assert data.train_x.shape == (20, 1, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (10, 1, 32, 32) and data.test_y.dtype == torch.int64
    assert data.in_chans == 1 and data.image_size == 32 and data.num_classes == 10
    assert data.mean == fashion_mnist.MEAN and len(data.std) == 1
    assert data.train_y.tolist() == (np.arange(20) % 10).tolist()
    inner = torch.from_numpy(arrays["train-images-idx3-ubyte"])
    assert torch.equal(data.train_x[:, 0, 2:30, 2:30], inner)
    border = data.train_x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0
    assert data.source == str(tmp_path / "fashion_mnist")


def test_fashion_mnist_plain_idx_in_torchvision_layout(tmp_path: Path) -> None:
    _write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False, n_train=10, n_test=5)
    data = load_dataset("fashion_mnist", tmp_path, download=False)
    assert data.train_x.shape == (10, 1, 32, 32) and data.test_y.tolist() == [0, 3, 6, 9, 2]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "bad magic number"),
        (lambda raw: raw[:-5], "header"),
        (lambda raw: raw[:6], "truncated inside its header"),
    ],
)
def test_fashion_mnist_corrupt_file(tmp_path: Path, damage, match: str) -> None:
    folder = tmp_path / "fashion_mnist"
    _write_fashion(folder)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(damage(gzip.decompress(path.read_bytes()))))
    with pytest.raises(DatasetFormatError, match=match) as info:
        load_dataset("fashion_mnist", tmp_path, download=False)
    assert str(path) in str(info.value)


def test_fashion_mnist_broken_gzip(tmp_path: Path) -> None:
    folder = tmp_path / "fashion_mnist"
    _write_fashion(folder)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetFormatError, match="could not be read or unzipped"):
        load_dataset("fashion_mnist", tmp_path, download=False)


def test_fashion_mnist_missing_raises_with_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _no_torchvision_download(monkeypatch)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-copy")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", tmp_path / "empty")
    assert calls == ["FashionMNIST"]
    _assert_one_sentence_naming(str(info.value), tmp_path / "empty" / "fashion_mnist")


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_system_copy(tmp_path: Path) -> None:
    data = load_dataset("fashion_mnist", tmp_path / "empty", download=False)
    assert data.train_x.shape == (60000, 1, 32, 32) and data.test_x.shape == (10000, 1, 32, 32)
    assert data.source == str(REAL_FASHION)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    sample = data.train_x[:5000].float() / 255
    assert abs(sample.mean().item() - data.mean[0]) < 0.01
    assert abs(sample.std().item() - data.std[0]) < 0.01


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_small_fast_and_deterministic() -> None:
    loads, timings = [], []
    for seed in (123, 456):  # the global RNG state must not matter
        torch.manual_seed(seed)
        start = time.perf_counter()
        loads.append(load_dataset("synthetic"))
        timings.append(time.perf_counter() - start)
    a, b = loads
    assert min(timings) < 1.0, timings  # min: robust to a stall on busy shared cores
    assert a.train_x.shape == (600, 3, 16, 16) and a.test_x.shape == (200, 3, 16, 16)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert torch.bincount(a.train_y).tolist() == [60] * 10 and torch.bincount(a.test_y).tolist() == [20] * 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    assert a.source == "synthetic (generated)" and a.num_classes == 10


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train tiny models on one thread: on busy shared cores 2 OpenMP threads can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_synthetic_is_learnable_but_not_trivial(one_thread: None) -> None:
    data = load_dataset("synthetic")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = BatchLoader(data.train_x, data.train_y, None, 32, data.mean, data.std, train=True, pad=2)
    test = BatchLoader(data.test_x, data.test_y, None, 200, data.mean, data.std, train=False)
    accuracies = []
    for epoch in range(8):
        train.set_epoch(epoch)
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            x, y = next(iter(test))
            accuracies.append((model(x).argmax(1) == y).float().mean().item())
    assert accuracies[0] < 0.9, accuracies
    assert max(accuracies) > 0.5, accuracies


# ----------------------------------------------------------------------------- shards


def test_split_shards_stratified_equal_disjoint() -> None:
    labels = torch.arange(10).repeat_interleave(23)  # 23 per class: remainder 3 dropped
    shards = split_shards(labels, 4, seed=0)
    assert len(shards) == 4
    for shard in shards:
        assert shard.dtype == torch.int64 and torch.equal(shard, shard.sort().values)
        assert torch.bincount(labels[shard], minlength=10).tolist() == [5] * 10
    union = torch.cat(shards)
    assert union.numel() == union.unique().numel() == 200


def test_split_shards_seed_and_per_class() -> None:
    labels = torch.arange(5).repeat(40)  # interleaved classes, 40 each
    a = split_shards(labels, 3, seed=7)
    b = split_shards(labels, 3, seed=7)
    c = split_shards(labels, 3, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    small = split_shards(labels, 4, seed=7, per_class=2)
    assert [s.numel() for s in small] == [10] * 4
    assert all(torch.bincount(labels[s]).tolist() == [2] * 5 for s in small)
    with pytest.raises(ValueError, match="fewer than"):
        split_shards(labels, 4, seed=0, per_class=11)
    with pytest.raises(ValueError, match="num_shards"):
        split_shards(labels, 0, seed=0)
    with pytest.raises(ValueError, match="per_class"):
        split_shards(labels, 2, seed=0, per_class=0)


# ----------------------------------------------------------------------------- augmentation


def _reference_augment(x: torch.Tensor, seed: int, pad: int) -> torch.Tensor:
    """Per-image loop doing what augment_batch promises, with the same draws."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        padded = torch.zeros((x.shape[1], h + 2 * pad, w + 2 * pad), dtype=x.dtype)
        padded[:, pad : pad + h, pad : pad + w] = x[i]
        crop = padded[:, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def test_augment_batch_is_shifted_copy_with_zero_fill() -> None:
    x = (torch.arange(16 * 2 * 8 * 8) % 250 + 1).to(torch.uint8).reshape(16, 2, 8, 8)  # no zeros
    out = augment_batch(x, torch.Generator().manual_seed(3), pad=4)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, _reference_augment(x, 3, 4))
    assert (out == 0).any()  # some crops reach into the zero padding


def test_augment_batch_flip_and_single_image() -> None:
    image = torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(1, 3, 4, 5)
    x = image.repeat(64, 1, 1, 1)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    flipped = torch.tensor([torch.equal(o, image[0].flip(-1)) for o in out])
    same = torch.tensor([torch.equal(o, image[0]) for o in out])
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54
    # a known single shift: the constructed image moved by (dy, dx) with zeros filled in
    g = torch.Generator().manual_seed(5)
    shifted = augment_batch(image, g, pad=2)
    assert torch.equal(shifted, _reference_augment(image, 5, 2))


def test_normalize_batch_maths() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3).repeat(1, 2, 1, 1)
    out = normalize_batch(x, (0.2, 0.5), (0.5, 0.25))
    expected = (x.float() / 255 - torch.tensor([0.2, 0.5]).reshape(1, 2, 1, 1)) / torch.tensor(
        [0.5, 0.25]
    ).reshape(1, 2, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
    assert out[0, 0, 0].tolist() == pytest.approx([-0.4, 0.0, 1.6], abs=1e-6)


# ----------------------------------------------------------------------------- BatchLoader


def _toy(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(n)  # label == position: shows which sample a row is


def _epoch(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_batch_loader_covers_each_index_once() -> None:
    x, y = _toy(50)
    indices = torch.arange(3, 50, 2)  # 24 samples
    loader = BatchLoader(x, y, indices, 5, (0.5,) * 3, (0.25,) * 3, train=True, seed=1)
    assert len(loader) == 5 and loader.num_samples == 24
    batches = _epoch(loader, 0)
    assert [b[0].shape[0] for b in batches] == [5, 5, 5, 5, 4]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == indices.tolist()
    assert seen.tolist() != indices.tolist()  # shuffled
    assert all(b[0].dtype == torch.float32 and b[0].shape[1:] == (3, 8, 8) for b in batches)
    dropping = BatchLoader(x, y, indices, 5, (0.5,) * 3, (0.25,) * 3, train=True, drop_last=True)
    assert len(dropping) == 4 and [b[0].shape[0] for b in _epoch(dropping, 0)] == [5] * 4


def test_batch_loader_eval_is_unshuffled_and_unaugmented() -> None:
    x, y = _toy(23)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    loader = BatchLoader(x, y, None, 10, mean, std, train=False, seed=5)
    batches = _epoch(loader, 3)
    assert len(loader) == 3 and torch.equal(torch.cat([b[1] for b in batches]), y)
    assert torch.allclose(torch.cat([b[0] for b in batches]), normalize_batch(x, mean, std))


def test_batch_loader_is_pure_function_of_seed_and_epoch() -> None:
    x, y = _toy(40)
    make = lambda seed, **kw: BatchLoader(x, y, None, 8, (0.5,) * 3, (0.5,) * 3, train=True, seed=seed, **kw)
    a, b = make(0), make(0)
    e1a, e2a = _epoch(a, 1), _epoch(a, 2)
    e1b = _epoch(b, 1)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1a, e1b))
    assert not torch.equal(torch.cat([p[1] for p in e1a]), torch.cat([p[1] for p in e2a]))
    other_seed = _epoch(make(1), 1)
    assert not torch.equal(torch.cat([p[1] for p in e1a]), torch.cat([p[1] for p in other_seed]))
    # resuming mid-epoch gives the remaining batches exactly
    b.set_epoch(1, start_batch=3)
    tail = list(b)
    assert len(tail) == len(e1a) - 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1a[3:], tail))
    # the augmentation is a crop + flip of the right source image
    x0, y0 = e1a[0]
    raw = (x0 * 0.5 + 0.5) * 255
    assert torch.allclose(raw, raw.round(), atol=1e-3)
    assert torch.equal(
        raw.round().to(torch.uint8), augment_batch(x[y0], make_generator(0, 1, 1, 0), 4)
    )


def test_batch_loader_channels_last_and_early_exit() -> None:
    x, y = _toy(40)
    plain = BatchLoader(x, y, None, 6, (0.5,) * 3, (0.5,) * 3, train=True, seed=2)
    last = BatchLoader(x, y, None, 6, (0.5,) * 3, (0.5,) * 3, train=True, seed=2, channels_last=True)
    p, q = _epoch(plain, 4), _epoch(last, 4)
    assert len(p) == len(q) == 7
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(p, q))
    assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in q)
    for i, _ in enumerate(last):  # leaving early and starting again is fine
        if i == 1:
            break
    assert len(list(last)) == 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_loader_cuda_matches_cpu() -> None:
    x, y = _toy(40)
    kwargs = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), train=True, seed=3)
    cpu = _epoch(BatchLoader(x, y, None, 16, **kwargs), 2)
    gpu = _epoch(BatchLoader(x, y, None, 16, device="cuda", channels_last=True, **kwargs), 2)
    assert all(b[0].is_cuda and b[1].is_cuda for b in gpu)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)


def test_batch_loader_rejects_bad_input() -> None:
    x, y = _toy(10)
    with pytest.raises(ValueError, match="uint8"):
        BatchLoader(x.float(), y, None, 4, (0.5,) * 3, (0.5,) * 3, train=True)
    with pytest.raises(ValueError, match="channels"):
        BatchLoader(x, y, None, 4, (0.5,), (0.5,), train=True)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(x, y, None, 0, (0.5,) * 3, (0.5,) * 3, train=True)
