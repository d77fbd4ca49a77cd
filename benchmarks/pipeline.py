"""Images per second of the toolbox's BatchLoader against torchvision's standard PIL pipeline.

Both produce the same thing from the same uint8 images: random crop (padding 4), random
horizontal flip, float conversion and normalisation, in shuffled batches.

    python benchmarks/pipeline.py [--dataset fashion_mnist|synthetic] [--batch-size 128]
                                  [--batches 200]

Rows: (a) BatchLoader train iteration; (b) a torch Dataset doing PIL conversion +
``transforms.Compose([RandomCrop, RandomHorizontalFlip, ToTensor, Normalize])`` per image,
through ``DataLoader`` with 0 and 2 workers. For scale it also times a small CNN's SGD step
on one fixed batch and prints BatchLoader's share of a training step. Rates are measured
after the first batch (worker start-up excluded). On shared cores the 2-thread rows can
collapse when other work runs: compare runs taken while the machine is quiet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolbox.data import BatchLoader, ImageData, load_dataset  # noqa: E402

THREADS = 2
Batch = tuple[torch.Tensor, torch.Tensor]
Step = Callable[[torch.Tensor, torch.Tensor], None]


class PilDataset(torch.utils.data.Dataset):
    """The classic per-image pipeline: uint8 tensor -> PIL image -> torchvision transforms."""

    def __init__(self, data: ImageData, pad: int = 4) -> None:
        from torchvision import transforms

        self.x, self.y = data.train_x, data.train_y
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(data.image_size, padding=pad),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(data.mean, data.std),
            ]
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = self.x[i]
        if image.shape[0] == 1:
            pil = Image.fromarray(image[0].numpy(), mode="L")
        else:
            pil = Image.fromarray(image.permute(1, 2, 0).numpy(), mode="RGB")
        return self.transform(pil), int(self.y[i])


def cycle_epochs(make_epoch: Callable[[int], Iterable[Batch]]) -> Iterator[Batch]:
    """Batches of epoch 0, 1, 2, ... without end."""
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def rate(batches: Iterator[Batch], count: int, step: Step | None = None) -> float:
    """Images per second over ``count`` batches (fed to ``step`` if given), after a warm-up."""
    x, y = next(batches)
    if step is not None:
        step(x, y)
    images = 0
    start = time.perf_counter()
    for _ in range(count):
        x, y = next(batches)
        if step is not None:
            step(x, y)
        images += x.shape[0]
    return images / (time.perf_counter() - start)


def batch_loader_epochs(data: ImageData, batch_size: int) -> Iterator[Batch]:
    """Endless train batches of the toolbox's BatchLoader."""
    loader = BatchLoader(
        data.train_x, data.train_y, None, batch_size, data.mean, data.std, train=True
    )

    def epoch(e: int) -> Iterable[Batch]:
        loader.set_epoch(e)
        return loader

    return cycle_epochs(epoch)


def torchvision_epochs(data: ImageData, batch_size: int, workers: int) -> Iterator[Batch]:
    """Endless train batches of the classic PIL + torchvision.transforms pipeline."""
    loader = torch.utils.data.DataLoader(
        PilDataset(data),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    return cycle_epochs(lambda e: loader)


def fixed_batch(batch: Batch) -> Iterator[Batch]:
    """The same batch forever (no loading cost at all)."""
    while True:
        yield batch


def cnn_step(in_chans: int, num_classes: int) -> Step:
    """One SGD step of a small CNN: a stand-in for the training loop that consumes batches."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(in_chans, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["fashion_mnist", "synthetic"], default="fashion_mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200, help="timed batches per row")
    parser.add_argument("--step-batches", type=int, default=30, help="timed CNN steps")
    parser.add_argument("--data-root", default=None, help="as --data-root of the toolbox")
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    data = load_dataset(args.dataset, args.data_root, download=False)
    bs, n = args.batch_size, args.batches
    print(
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"CPU cores {os.cpu_count()}; dataset {data.name} {tuple(data.train_x.shape)} "
        f"from {data.source}; batch size {bs}, {n} timed batches per row"
    )
    rows = [
        ("(a) BatchLoader (crop+flip+normalize, batched tensor ops)",
         rate(batch_loader_epochs(data, bs), n)),
        ("(b) torchvision PIL pipeline, DataLoader num_workers=0",
         rate(torchvision_epochs(data, bs, 0), n)),
        ("(b) torchvision PIL pipeline, DataLoader num_workers=2",
         rate(torchvision_epochs(data, bs, 2), n)),
    ]  # fmt: skip
    first = next(batch_loader_epochs(data, bs))
    step = rate(fixed_batch(first), args.step_batches, cnn_step(data.in_chans, data.num_classes))

    width = max(len(label) for label, _ in rows)
    print(f"{'pipeline':<{width}}  {'img/s':>10}  {'(a) is x faster':>15}")
    for label, value in rows:
        print(f"{label:<{width}}  {value:>10,.0f}  {rows[0][1] / value:>14.1f}x")
    print(
        f"for scale: one SGD step of a small CNN runs at {step:,.0f} img/s, so BatchLoader's "
        f"work is {100 * step / rows[0][1]:.1f}% of a training step"
    )

if __name__ == "__main__":
    main()
