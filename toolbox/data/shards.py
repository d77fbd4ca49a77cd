"""Class-stratified shards of a training set: the "new data" that arrives one shard per step."""

from __future__ import annotations

import torch


def split_shards(
    labels: torch.Tensor, num_shards: int, seed: int, per_class: int | None = None
) -> list[torch.Tensor]:
    """Split sample indices into ``num_shards`` disjoint, equal, class-stratified shards.

    For every class (in ascending label order) its indices are permuted with one
    ``torch.Generator`` seeded by ``seed``; shard ``s`` takes the ``s``-th block of ``k``
    of them, where ``k`` is ``per_class`` if given, else ``floor(count / num_shards)`` (the
    remainder is dropped, so balanced classes give shards of exactly equal size). Returns
    sorted int64 index tensors; the same seed always gives the same shards.

    Raises ``ValueError`` when ``num_shards`` or ``per_class`` is below 1, when ``labels`` is
    not a 1-D integer tensor, or when a class has too few samples for every shard.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}.")
    if per_class is not None and per_class < 1:
        raise ValueError(
            f"per_class must be at least 1 (or None for all samples), got {per_class}."
        )
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-D integer tensor, got {labels.dtype} "
            f"of shape {tuple(labels.shape)}."
        )
    if labels.numel() == 0:
        raise ValueError("labels is empty, so there is nothing to split into shards.")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(num_shards)]
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        count = members.numel()
        take = per_class if per_class is not None else count // num_shards
        if take < 1 or take * num_shards > count:
            need = max(take, 1) * num_shards
            raise ValueError(
                f"Class {cls} has {count} samples, fewer than the {need} needed for "
                f"{num_shards} shards of {max(take, 1)} per class."
            )
        members = members[torch.randperm(count, generator=generator)]
        for s in range(num_shards):
            parts[s].append(members[s * take : (s + 1) * take])
    return [torch.sort(torch.cat(p)).values.to(torch.int64) for p in parts]


def check_validation_size(labels: torch.Tensor, val_per_class: int, num_shards: int, per_class: int | None) -> None:
    """Raise ``ValueError`` naming ``--val-per-class`` when holding out ``val_per_class`` images of
    every class leaves too few of the smallest class for ``num_shards`` shards."""
    counts = torch.bincount(torch.as_tensor(labels).cpu())
    counts = counts[counts > 0]
    if not val_per_class or counts.numel() == 0:
        return
    fewest, need = int(counts.min()), num_shards * (per_class or 1)
    if val_per_class + need > fewest:
        fix = f"pass --val-per-class {fewest - need} or less" if fewest > need else "drop --val-per-class"
        raise ValueError(f"--val-per-class {val_per_class} holds out {min(val_per_class, fewest)} of the {fewest} "
                         f"training images of the smallest class, leaving {max(fewest - val_per_class, 0)} for "
                         f"{num_shards} step(s) that need {need}; {fix}.")
