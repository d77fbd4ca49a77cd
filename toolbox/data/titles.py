"""What a run's data is, in words: ``Fashion-MNIST (real, /usr/share/...)`` or ``synthetic shapes
(no Fashion-MNIST found ...)``, for the line a run prints first."""

from __future__ import annotations

from toolbox.data.auto import FALLBACK_SOURCE

#: The datasets' names as people write them.
TITLES = {"fashion_mnist": "Fashion-MNIST", "cifar100": "CIFAR-100", "tiny_imagenet": "Tiny-ImageNet",
          "synthetic": "synthetic shapes", "imagefolder": "image folders", "shards": "image folders"}

#: Built-in datasets read from files: real images.
REAL = ("fashion_mnist", "cifar100", "tiny_imagenet")


def describe_data(name: str, source: str) -> str:
    """The dataset ``name`` in words, with where it came from (``source`` as the loader set it)."""
    if source == FALLBACK_SOURCE:
        return "synthetic shapes (no Fashion-MNIST found: these numbers are not Fashion-MNIST's)"
    title = TITLES.get(name, name)
    if name in REAL:
        return f"{title} (real, {source})"
    if name == "synthetic":
        return f"{title} ({source.removeprefix('synthetic ').strip('()')})"
    return f"{title} ({source})"
