"""``--dataset imagefolder``: decoding geometry, folder rules, the decoded cache (hits, rebuilds,
kills), bad inputs, and tiny runs through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fabricate import truncate_file, write_image, write_image_folder
from PIL import Image
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.data import BatchLoader
from toolbox.data.decoded_cache import CACHE_DIRNAME, CACHE_ENV
from toolbox.data.image_decode import decode_image
from toolbox.data.imagefolder import load_image_folders, load_imagefolder
from toolbox.errors import UsageError
from toolbox.storage import atomic as tbio
from toolbox.storage import checkpoint as ckpt

runner = CliRunner()
TINY_RUN = ["--arch", "cifar_resnet20", "--steps", "1", "--epochs", "1", "--batch-size", "8",
            "--eval-batch-size", "16", "--device", "cpu", "--threads", "1"]


def mixed_root(root: Path) -> Path:
    """train/ and test/ with PNG and JPEG, grayscale and RGB, mixed sizes, a stray text file
    and a hidden file; grayscale is the majority (6 of 10 training images per class)."""
    for split, count, seed in (("train", 2, 1), ("test", 1, 11)):  # no test image is a training image
        folder = root / split
        write_image_folder(folder, per_class=count * 3, size=(28, 28), seed=seed)
        write_image_folder(folder, per_class=count, size=(40, 50), rgb=True, suffix=".jpg", seed=seed + 1)
        for name in ("ant", "bee"):
            for i in range(count):
                write_image(folder / name / f"wide{i}.webp", np.full((20, 60, 3), 90 + i + seed, np.uint8))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "bee" / ".hidden.png").write_bytes(b"junk")
    return root


# ------------------------------------------------------------------------ decoding geometry


def test_small_grayscale_image_is_zero_padded_like_fashion_mnist(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    out = decode_image(str(write_image(tmp_path / "a.png", pixels)), 32, 1)
    expected = np.zeros((1, 32, 32), np.uint8)
    expected[0, 2:30, 2:30] = pixels  # toolbox.data.fashion_mnist pads 2 pixels on every side
    assert np.array_equal(out, expected)


def test_large_image_matches_torchvision_resize_and_centre_crop(tmp_path: Path) -> None:
    from torchvision import transforms

    pixels = np.random.default_rng(1).integers(0, 256, (48, 70, 3), dtype=np.uint8)
    path = write_image(tmp_path / "a.png", pixels)
    reference = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.PILToTensor()])
    with Image.open(path) as image:
        expected = reference(image).numpy()
    assert np.array_equal(decode_image(str(path), 32, 3), expected)


def test_narrow_image_is_padded_and_cropped_and_converted(tmp_path: Path) -> None:
    from torchvision import transforms

    pixels = np.random.default_rng(2).integers(0, 256, (20, 60, 3), dtype=np.uint8)
    path = write_image(tmp_path / "a.bmp", pixels)
    with Image.open(path) as image:
        expected = transforms.PILToTensor()(transforms.CenterCrop(32)(image.convert("L"))).numpy()
    assert np.array_equal(decode_image(str(path), 32, 1), expected)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = write_image(tmp_path / "deep.png", np.full((8, 8), 65535, np.uint16))
    assert decode_image(str(path), 8, 1).min() == 255
    assert decode_image(str(path), 8, 3).shape == (3, 8, 8)


def test_real_fashion_mnist_pngs_give_the_built_in_pixels(tmp_path: Path) -> None:
    from toolbox.data import DatasetNotFoundError, load_dataset

    try:
        builtin = load_dataset("fashion_mnist", tmp_path / "none", download=False)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    picked = torch.arange(0, 60000, 3001)
    for i in picked.tolist():
        label = int(builtin.train_y[i])
        write_image(tmp_path / "train" / f"{label}" / f"{i:05d}.png", builtin.train_x[i, 0, 2:30, 2:30].numpy())
    images = load_image_folders([tmp_path / "train"], [str(c) for c in range(10)], 32, None,
                                require_all_classes=False)
    order = sorted(picked.tolist(), key=lambda i: (int(builtin.train_y[i]), i))
    assert torch.equal(images.x, builtin.train_x[order]) and torch.equal(images.y, builtin.train_y[order])


# ------------------------------------------------------------------------------ the dataset


def test_mixed_folder_loads_with_sorted_classes_majority_channels_and_stats(tmp_path: Path) -> None:
    data = load_imagefolder(mixed_root(tmp_path))
    assert data.classes == ["ant", "bee"] and data.num_classes == 2
    assert tuple(data.train_x.shape) == (20, 1, 32, 32) and tuple(data.test_x.shape) == (10, 1, 32, 32)
    assert data.train_y.tolist() == [0] * 10 + [1] * 10
    pixels = data.train_x.numpy().astype(np.float64) / 255
    assert data.mean == pytest.approx((pixels.mean(),), abs=1e-4)
    assert data.std == pytest.approx((pixels.std(),), abs=1e-4)
    assert data.name == "imagefolder" and data.skipped == []


def test_explicit_folders_channels_and_size(tmp_path: Path) -> None:
    mixed_root(tmp_path)
    data = load_imagefolder(train=str(tmp_path / "train"), test=str(tmp_path / "test"), image_size=16, channels=3)
    assert tuple(data.train_x.shape) == (20, 3, 16, 16) and len(data.mean) == 3


def test_val_folder_serves_as_test_set(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "val", per_class=1, seed=9)
    assert load_imagefolder(tmp_path).test_x.shape[0] == 2


def test_several_folders_load_as_one_set_with_parts(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "step1", per_class=2)
    write_image_folder(tmp_path / "step2", per_class=3, seed=5)
    images = load_image_folders([tmp_path / "step1", tmp_path / "step2"], ["ant", "bee"])
    assert [p.tolist() for p in images.parts] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert images.y.tolist() == [0, 0, 1, 1, 0, 0, 0, 1, 1, 1]


def with_test(root: Path) -> Path:
    """A valid test/ folder beside whatever train/ a case makes."""
    write_image_folder(root / "test", per_class=1)
    return root


@pytest.mark.parametrize("make, message", [
    (lambda root: write_image_folder(with_test(root) / "train") and (root / "train" / "cat").mkdir(),
     "class folder {root}/train/cat holds no images"),
    (lambda root: (with_test(root) / "train" / "ant").mkdir(parents=True) or (root / "train" / "ant" / "a.txt").write_text("x"),
     "class folder {root}/train/ant holds no images"),
    (lambda root: write_image(with_test(root) / "train" / "a.png", np.zeros((4, 4), np.uint8)),
     "{root}/train holds images but no class folders"),
    (lambda root: (with_test(root) / "train").mkdir(), "{root}/train has no class folders"),
    (lambda root: write_image_folder(root / "train"), "has no test/ (or val/) folder"),
    (lambda root: write_image_folder(root / "test"), "has no train/ folder"),
    (lambda root: write_image_folder(root / "train") and write_image_folder(root / "test", ("ant", "cow")),
     "class folder 'cow' that is not one of the 2 classes (ant, bee)"),
])
def test_bad_layouts_are_one_sentence(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    with pytest.raises(UsageError) as info:
        load_imagefolder(tmp_path)
    assert message.format(root=tmp_path) in str(info.value)


def test_every_step_folder_must_hold_every_class(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "new", classes=("ant",))
    with pytest.raises(UsageError, match="has no folder for class 'bee'"):
        load_image_folders([tmp_path / "new"], ["ant", "bee"])


def test_train_without_test_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--train and --test go together"):
        load_imagefolder(train=str(tmp_path))


def test_corrupt_image_is_named_or_skipped_and_listed(tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path / "train", per_class=4)
    write_image_folder(tmp_path / "test", per_class=1, seed=9)
    truncate_file(paths[1])
    (tmp_path / "train" / "bee" / "fake.jpg").write_text("this is no JPEG")
    with pytest.raises(UsageError) as info:
        load_imagefolder(tmp_path)
    text = str(info.value)
    assert str(paths[1]) in text and "--skip-bad-images" in text and "1 more unreadable" in text
    data = load_imagefolder(tmp_path, skip_bad_images=True)
    assert data.train_x.shape[0] == 7 and data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert len(data.skipped) == 2 and str(paths[1]) in data.skipped[0] and "fake.jpg" in data.skipped[1]
    good = load_image_folders([tmp_path / "train"], skip_bad_images=True)
    assert torch.equal(good.x[0], torch.from_numpy(decode_image(str(paths[0]), 32, 1)))
    assert torch.equal(good.x[1], torch.from_numpy(decode_image(str(paths[2]), 32, 1)))


# ------------------------------------------------------------------------- the decoded cache


def test_second_load_hits_the_cache_and_changes_rebuild_it(tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path / "train", per_class=3)
    first = load_image_folders([tmp_path / "train"])
    assert first.built and first.cache.parent == tmp_path / CACHE_DIRNAME
    again = load_image_folders([tmp_path / "train"])
    assert not again.built and torch.equal(again.x, first.x)
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    assert load_image_folders([tmp_path / "train"]).built
    write_image(tmp_path / "train" / "ant" / "new.png", np.zeros((28, 28), np.uint8))  # added
    grown = load_image_folders([tmp_path / "train"])
    assert grown.built and grown.x.shape[0] == 7
    paths[4].unlink()  # removed
    shrunk = load_image_folders([tmp_path / "train"])
    assert shrunk.built and shrunk.x.shape[0] == 6
    assert not load_image_folders([tmp_path / "train"]).built
    assert load_image_folders([tmp_path / "train"], image_size=16).built  # another size, another entry


def test_a_failed_decode_is_tried_again_on_the_next_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolbox.data import image_decode

    write_image_folder(tmp_path / "train", per_class=2)
    calls, real = [], image_decode.decode_image

    def fails_once(source, size, channels):  # the second file is unreadable once (a transient error)
        calls.append(1)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        return real(source, size, channels)

    monkeypatch.setattr(image_decode, "decode_image", fails_once)
    first = load_image_folders([tmp_path / "train"], skip_bad_images=True, workers=1)
    assert first.x.shape[0] == 3 and "Permission denied" in first.skipped[0]
    again = load_image_folders([tmp_path / "train"], skip_bad_images=True, workers=1)  # nothing changed on disk
    assert again.built and again.x.shape[0] == 4 and not again.skipped
    assert not load_image_folders([tmp_path / "train"], workers=1).built  # a clean entry is trusted


def test_an_image_restored_with_its_old_mtime_is_decoded_again(tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path / "train", per_class=2)
    good, stat = paths[1].read_bytes(), paths[1].stat()
    paths[1].write_bytes(b"x" * len(good))  # half-copied: not an image yet, same size
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(load_image_folders([tmp_path / "train"], skip_bad_images=True).skipped) == 1
    time.sleep(0.05)
    paths[1].write_bytes(good)  # the copy finished: same size, same mtime
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = load_image_folders([tmp_path / "train"])
    assert again.built and again.x.shape[0] == 4


def test_a_replacement_of_the_same_size_and_mtime_is_decoded_again(tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path / "train", per_class=2, suffix=".bmp")
    first = load_image_folders([tmp_path / "train"])
    stat = paths[0].stat()
    other = write_image(tmp_path / "other.bmp", np.full((28, 28), 200, np.uint8)).read_bytes()
    assert len(other) == stat.st_size
    time.sleep(0.05)
    paths[0].write_bytes(other)  # in place (same inode), then the old mtime back
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = load_image_folders([tmp_path / "train"])
    assert again.built and not torch.equal(again.x[0], first.x[0])
    assert torch.equal(again.x[0], torch.from_numpy(decode_image(str(paths[0]), 32, 1)))


def test_a_damaged_cache_is_decoded_again(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train")
    first = load_image_folders([tmp_path / "train"])
    pixels = first.x.clone()
    images = first.cache.with_name(first.cache.name + ".images.npy")
    head = images.read_bytes()[:100]
    images.unlink()  # (truncating the mapped file in place would pull the pages from under `first`)
    images.write_bytes(head)  # a truncated copy, behind the toolbox's back
    again = load_image_folders([tmp_path / "train"])
    assert again.built and torch.equal(again.x, pixels)


def test_cache_folder_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path / "data" / "train")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    images = load_image_folders([tmp_path / "data" / "train"])
    assert images.cache.parent == tmp_path / "elsewhere" and not (tmp_path / "data" / CACHE_DIRNAME).exists()


def test_worker_processes_give_the_same_array(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "a" / "train", per_class=20, size=(30, 36), rgb=True, suffix=".jpg")
    write_image_folder(tmp_path / "b" / "train", per_class=20, size=(30, 36), rgb=True, suffix=".jpg")
    pooled = load_image_folders([tmp_path / "a" / "train"], workers=2)
    single = load_image_folders([tmp_path / "b" / "train"], workers=1)
    assert pooled.built and torch.equal(pooled.x, single.x) and pooled.mean == single.mean


@pytest.mark.parametrize("kill_at", ["decoded-cache-chunk", "decoded-cache-before-key"])
def test_a_kill_while_building_leaves_no_trusted_cache(tmp_path: Path, kill_at: str) -> None:
    paths = write_image_folder(tmp_path / "train", per_class=12)
    load_image_folders([tmp_path / "train"])  # an old, valid entry ...
    write_image(paths[0], np.full((28, 28), 7, np.uint8))  # ... made stale by a changed image
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    code = ("from toolbox.data.imagefolder import load_image_folders; "
            f"load_image_folders([{str(tmp_path / 'train')!r}], workers=2)")
    env = {**os.environ, tbio.KILL_ENV: kill_at}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    rerun = load_image_folders([tmp_path / "train"])
    assert rerun.built, "a half-built cache was trusted"
    assert rerun.x[0, 0, 2:30, 2:30].unique().tolist() == [7]
    assert not any(".tmp" in p.name for p in (tmp_path / CACHE_DIRNAME).iterdir())


def test_batch_loader_gathers_from_the_memory_map_without_copying(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", per_class=10)
    images = load_image_folders([tmp_path / "train"])
    shard = torch.tensor([1, 3, 4, 8, 12, 15, 19])
    mapped = BatchLoader(images.x, images.y, shard, 3, (0.5,), (0.25,), train=True, seed=3)
    copied = BatchLoader(images.x[shard].clone(), images.y[shard].clone(), None, 3, (0.5,), (0.25,), train=True,
                         seed=3)
    assert mapped.x.data_ptr() == images.x.data_ptr() and len(mapped) == len(copied) == 3
    for (xa, ya), (xb, yb) in zip(mapped, copied):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ---------------------------------------------------------------------------- the CLI


def test_cli_run_on_image_folders_records_classes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--dataset", "imagefolder", "--data-root", str(mixed_root(tmp_path / "d")),
                                 "--out", str(out), "--mean", "0.5", "--std", "0.25", "--image-size", "16",
                                 *TINY_RUN])
    assert result.exit_code == 0, result.output
    checkpoint = ckpt.load_checkpoint(out / "checkpoints" / "step1_learn.pt")
    assert checkpoint["classes"] == ["ant", "bee"] and checkpoint["in_chans"] == 1
    assert checkpoint["input_size"] == [1, 16, 16]
    result = runner.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(out / "checkpoints" / "step1_learn.pt"), "--device", "cpu"])
    assert result.exit_code == 0 and "on imagefolder test set: top-1" in result.output, result.output


def test_cli_bad_image_is_exit_2_and_nothing_is_written(tmp_path: Path) -> None:
    paths = write_image_folder(tmp_path / "d" / "train", per_class=4)
    write_image_folder(tmp_path / "d" / "test", per_class=1, seed=9)
    truncate_file(paths[2])
    out = tmp_path / "run"
    args = ["run", "--dataset", "imagefolder", "--data-root", str(tmp_path / "d"), "--out", str(out), *TINY_RUN]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"Image {paths[2]} could not be decoded" in result.output and "Traceback" not in result.output
    assert not out.exists()
    result = runner.invoke(app, [*args, "--skip-bad-images"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, message", [
    (["--dataset", "synthetic", "--image-size", "16"], "--image-size applies to --dataset imagefolder only"),
    (["--dataset", "imagefolder", "--channels", "2"], "--channels must be 1 (grayscale) or 3 (RGB), got 2"),
    (["--dataset", "imagefolder", "--std", "0.5,0"], "--std values must be positive"),
    (["--dataset", "imagefolder", "--mean", "a"], "--mean must be one number per channel"),
    (["--dataset", "imagefolder", "--mean", "0.1,0.2"], "--mean gives 2 values but the imagefolder images have 1"),
    (["--dataset", "imagefolder", "--data-root", "{root}/nothing"], "{root}/nothing has no train/ folder"),
])
def test_cli_bad_image_options(tmp_path: Path, args: list[str], message: str) -> None:
    write_image_folder(tmp_path / "d" / "train")
    write_image_folder(tmp_path / "d" / "test", per_class=1, seed=9)
    args = [a.format(root=tmp_path) for a in args]
    root = [] if "--data-root" in args else ["--data-root", str(tmp_path / "d")]
    result = runner.invoke(app, ["run", *args, *root, "--out", str(tmp_path / "run"), *TINY_RUN])
    assert result.exit_code == 2, result.output
    assert message.format(root=tmp_path) in result.output and "Traceback" not in result.output
