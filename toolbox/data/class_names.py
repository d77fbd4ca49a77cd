"""The one answer to "what are this dataset's class names?": the names the data carries (image
folders, CIFAR-100's meta file), else the built-in dataset's known names (Fashion-MNIST's files
carry none), else the label numbers. The step review's per-class table and plot and the serve
file's recipe both ask here, so they always name a class alike."""

from __future__ import annotations

from typing import Any, Sequence

from toolbox.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES

#: Class names of built-in datasets whose files do not carry them.
DATASET_CLASSES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "synthetic": list(SYNTHETIC_CLASSES),
}


def class_names(classes: Sequence[str] | None, num_classes: int, dataset: str | None) -> list[str]:
    """``classes`` (the names the data carries) when there are ``num_classes`` of them, else the
    known names of built-in ``dataset``, else ``"0"``, ``"1"``, ..."""
    for names in (classes, DATASET_CLASSES.get(dataset or "")):
        if names and len(names) == num_classes:
            return [str(name) for name in names]
    return [str(i) for i in range(num_classes)]


def data_class_names(data: Any) -> list[str]:
    """:func:`class_names` of a loaded :class:`~toolbox.data.datasets.ImageData`."""
    return class_names(data.classes, data.num_classes, data.name)
