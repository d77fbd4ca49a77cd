"""Arrival processes: how a training set is cut into the shards that arrive one per step.

``stratified`` (the default) gives every step the same class mix (:func:`split_shards`);
``dirichlet:ALPHA`` keeps every step's total but draws its class proportions from a symmetric
Dirichlet(ALPHA) (small ALPHA: a few classes dominate a step; large: close to balanced). Every
class still arrives somewhere in the stream, and the test set is untouched. A plugin may supply
its own process through the ``toolbox_arrivals`` hook (``--split NAME[:ARGS]``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from toolbox.data.shards import split_shards
from toolbox.errors import UsageError

KINDS = ("stratified", "dirichlet")


def parse_split(text: str) -> tuple[str, float | None]:
    """``"stratified"`` -> ``("stratified", None)``, ``"dirichlet:0.3"`` -> ``("dirichlet", 0.3)``;
    another ``NAME[:ARGS]`` is ``(NAME, None)`` (for a plugin to answer). ValueError for a bad one."""
    kind, _, arg = str(text).partition(":")
    if kind == "stratified" and not arg:
        return kind, None
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = float("nan")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"--split {text!r} needs a positive concentration, e.g. dirichlet:0.3.")
        return kind, alpha
    if not kind or kind == "stratified":
        raise ValueError(f"--split {text!r} is unknown; use stratified or dirichlet:ALPHA (e.g. dirichlet:0.3).")
    return kind, None


def check_split(split: str, folders: bool = False) -> None:
    """Refuse a malformed ``--split`` (or one beside ``--shards``, whose folders are the arrivals) with one sentence."""
    try:
        parse_split(split)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if folders and split != "stratified":
        raise UsageError(f"--split {split} applies to a dataset the toolbox splits into steps; a --shards run's "
                         "folders are its arrivals, so drop --split.")


def allocate(proportions: list[float], total: int, available: list[int]) -> list[int]:
    """Whole counts per class summing to ``total`` (at most the sum of ``available``): largest
    remainders of ``total * proportions`` (ties: the lower class), each capped by ``available``,
    what a capped class cannot take going to the others by the same rule."""
    counts = [0] * len(proportions)
    left = min(total, sum(available))
    while left > 0:
        open_ = [c for c in range(len(proportions)) if counts[c] < available[c]]
        weights = [proportions[c] for c in open_]
        if sum(weights) <= 0:
            weights = [1.0] * len(open_)
        share = [left * w / sum(weights) for w in weights]
        add = [math.floor(s) for s in share]
        order = sorted(range(len(open_)), key=lambda i: (-(share[i] - add[i]), open_[i]))
        for i in order[: left - sum(add)]:
            add[i] += 1
        for i, c in enumerate(open_):
            take = min(add[i], available[c] - counts[c])
            counts[c] += take
            left -= take
    return counts


def dirichlet_counts(proportions: list[list[float]], totals: list[int], available: list[int]) -> list[list[int]]:
    """Class counts per step (``proportions[s]`` sums to 1): :func:`allocate` step after step from
    what is left of each class; then a class that arrived nowhere takes one image in the step
    where its proportion was highest, from that step's largest class (the step's total is kept)."""
    left, counts = list(available), []
    for share, total in zip(proportions, totals):
        step = allocate(share, total, left)
        left = [a - c for a, c in zip(left, step)]
        counts.append(step)
    for cls in range(len(available)):
        if available[cls] and not any(step[cls] for step in counts):
            s = max(range(len(counts)), key=lambda k: (proportions[k][cls], -k))
            donor = max(range(len(available)), key=lambda c: (counts[s][c], -c))
            if counts[s][donor] > 1:
                counts[s][donor] -= 1
                counts[s][cls] += 1
    return counts


def dirichlet_shards(labels: torch.Tensor, num_shards: int, seed: int, per_class: int | None,
                     alpha: float) -> list[torch.Tensor]:
    """Shards with the totals of :func:`split_shards` (``per_class`` x classes, or every class's
    ``count // num_shards`` summed) and class proportions drawn from Dirichlet(``alpha``) by a
    numpy generator seeded with ``seed``; each class's images are permuted with ``seed`` and
    handed out in step order. Returns sorted int64 index tensors."""
    split_shards(labels, num_shards, seed, per_class)  # the same checks and errors as the stratified split
    labels = torch.as_tensor(labels).cpu()
    classes = torch.unique(labels).tolist()
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    available = [m.numel() for m in members]
    total = sum(per_class if per_class is not None else n // num_shards for n in available)
    rng = np.random.default_rng(seed)
    proportions = rng.dirichlet([alpha] * len(classes), size=num_shards).tolist()
    counts = dirichlet_counts(proportions, [total] * num_shards, available)
    generator = torch.Generator().manual_seed(seed)
    members = [m[torch.randperm(m.numel(), generator=generator)] for m in members]
    used = [0] * len(classes)
    shards = []
    for step in counts:
        parts = []
        for c, count in enumerate(step):
            parts.append(members[c][used[c]: used[c] + count])
            used[c] += count
        shards.append(torch.sort(torch.cat(parts)).values.to(torch.int64))
    return shards


def class_counts(labels: torch.Tensor, shards: list[torch.Tensor]) -> list[list[int]]:
    """Images of every class (ascending label) in each shard."""
    labels = torch.as_tensor(labels).cpu()
    size = int(labels.max()) + 1 if labels.numel() else 0
    return [torch.bincount(labels[s.cpu()], minlength=size).tolist() for s in shards]


def default_shards(labels: torch.Tensor, num_shards: int, seed: int, per_class: int | None,
                   split: str) -> list[torch.Tensor] | None:
    """The built-in arrival processes (``stratified``, ``dirichlet:ALPHA``); None for another name."""
    kind, alpha = parse_split(split)
    if kind == "stratified":
        return split_shards(labels, num_shards, seed, per_class)
    if kind == "dirichlet":
        return dirichlet_shards(labels, num_shards, seed, per_class, float(alpha))
    return None
