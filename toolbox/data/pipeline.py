"""Batch pipeline over in-memory uint8 images: shuffle, crop + flip, normalise, move.

Augmentation works on whole batches with tensor ops (one gather per batch, no per-image
Python loop, no PIL). All randomness comes from ``torch.Generator`` objects derived from
``(seed, epoch)`` (and the batch number), so what a loader yields is a pure function of its
seed and epoch: a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

_MASK64 = (1 << 64) - 1
_PERMUTATION, _AUGMENT = 0, 1


def make_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by a well-mixed hash of the integers ``keys``."""
    entropy = [k & _MASK64 for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4, offset: int = 0,
                  total: int | None = None) -> torch.Tensor:
    """Random crop and horizontal flip of a uint8 batch (B x C x H x W), same shape and dtype.

    Every image is zero-padded by ``pad`` pixels on each side and cropped back to H x W at an
    offset drawn uniformly from ``0..2*pad`` per axis and per image; then it is mirrored left
    to right with probability 0.5. Draws (row offsets, column offsets, flips, in that order)
    come from ``generator`` on the CPU; the pixel work runs on ``x.device`` as one gather.

    ``x`` may be the images ``offset .. offset + B - 1`` of a batch of ``total`` images (one
    process's share in a multi-process run): the draws are made for all ``total`` images and
    this part's are used, so the shares together are augmented exactly as the whole batch.
    """
    if x.dim() != 4:
        raise ValueError(
            f"augment_batch expects a B x C x H x W batch, got shape {tuple(x.shape)}."
        )
    if pad < 0:
        raise ValueError(f"pad must be 0 or more, got {pad}.")
    b, c, h, w = x.shape
    n = b if total is None else total
    if offset < 0 or offset + b > n:
        raise ValueError(f"images {offset}..{offset + b - 1} are not part of a batch of {n}.")
    part = slice(offset, offset + b)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)[part]
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)[part]
    flip = (torch.rand(n, generator=generator) < 0.5)[part]
    if b == 0:
        return x.clone()
    ar_w = torch.arange(w)
    cols = torch.where(flip[:, None], ox[:, None] + (w - 1) - ar_w, ox[:, None] + ar_w)
    rows = oy[:, None] + torch.arange(h)
    wp = w + 2 * pad
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x.contiguous()
    out = torch.gather(padded.reshape(b, c, -1), 2, flat.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def _affine(
    mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)``, 1 x C x 1 x 1, with ``(x / 255 - mean) / std == (x - shift) * scale``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    if (std_t <= 0).any():
        raise ValueError(f"std must be positive, got {std_t.flatten().tolist()}.")
    return (mean_t * 255).to(device), (1.0 / (std_t * 255)).to(device)


def normalize_batch(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Float32 ``(x / 255 - mean) / std`` of a uint8 batch, per channel; memory format kept."""
    shift, scale = _affine(mean, std, x.device)
    if shift.shape[1] != x.shape[1]:
        raise ValueError(f"mean/std have {shift.shape[1]} channels but the batch has {x.shape[1]}.")
    return x.float().sub_(shift).mul_(scale)


class BatchLoader:
    """Iterate over an in-memory uint8 image set in batches of normalised float tensors.

    The images stay where they are (an in-memory tensor or a memory-mapped decoded cache, never
    copied as a whole); each batch is gathered from them through ``indices``. For ``train=True`` the order is a
    permutation drawn from a generator seeded by ``(seed, epoch)`` and each batch gets
    :func:`augment_batch` with a generator seeded by ``(seed, epoch, batch number)``; for
    ``train=False`` the order is the stored order and nothing is augmented. Batches are
    yielded as ``(x_float, y_int64)`` on ``device``; on CUDA the uint8 batch is gathered into
    pinned memory, copied with ``non_blocking=True`` and augmented/normalised on the GPU.
    There is deliberately no background prefetch thread: on the 2-core target it made a
    training loop 3-15% slower (the batch work is ~1% of a small CNN step and the thread
    competes with the model's intra-op threads); see ``benchmarks/pipeline.py``.

    Multi-process runs (``world_size`` > 1): ``batch_size`` is the global batch, which must be
    divisible by ``world_size``. Every process draws the same order; the last
    ``num_samples % world_size`` images of it are left out (at most ``world_size - 1`` per
    epoch, a different few every epoch), every global batch is cut into ``world_size`` equal
    contiguous parts and process ``rank`` yields part ``rank``, augmented exactly as in the
    whole batch. The parts of all processes are therefore the batches one process would yield
    (with ``world_size = 1`` nothing changes), and ``len()`` is the same on every process.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        indices: torch.Tensor | None,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        seed: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        drop_last: bool = False,
        pad: int = 4,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(
                f"x must be a uint8 N x C x H x W tensor, got {x.dtype} of shape {tuple(x.shape)}."
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must be 1-D with one label per image ({x.shape[0]}), "
                f"got shape {tuple(y.shape)}."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise ValueError(
                f"rank {rank} of {world_size} processes with a global batch of {batch_size}: "
                "the batch must be divisible by the number of processes."
            )
        # No copy of the image set: ``x`` may be a memory-mapped cache larger than RAM, so every
        # batch is gathered from it through ``self.index`` (the selected images, or all of them).
        self.x = x if x.device.type == "cpu" and x.is_contiguous() else x.cpu().contiguous()
        self.y = y.cpu().to(torch.int64).contiguous()
        self.index = None if indices is None else torch.as_tensor(indices, dtype=torch.int64).cpu()
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.pad = pad
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self._shift, self._scale = _affine(mean, std, self.device)
        if self._shift.shape[1] != self.x.shape[1]:
            raise ValueError(
                f"mean/std have {self._shift.shape[1]} channels "
                f"but the images have {self.x.shape[1]}."
            )

    def __len__(self) -> int:
        """Number of (global) batches in a full epoch."""
        n = self._usable()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _usable(self) -> int:
        """Images of an epoch's order that are used: all but ``num_samples % world_size``."""
        n = self.num_samples
        return n - n % self.world_size

    @property
    def num_samples(self) -> int:
        """Number of images the loader iterates over."""
        return int(self.x.shape[0] if self.index is None else self.index.numel())

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose order and augmentation the next iteration uses.

        ``start_batch`` skips the first batches (exact mid-epoch resume): the remaining
        batches are identical to those of a full pass.
        """
        if start_batch < 0:
            raise ValueError(f"start_batch must be 0 or more, got {start_batch}.")
        self.epoch = epoch
        self.start_batch = start_batch

    def order(self) -> torch.Tensor:
        """The sample order of the current epoch (a permutation for train, else 0..N-1)."""
        n = self.num_samples
        if not self.train:
            return torch.arange(n)
        return torch.randperm(n, generator=make_generator(self.seed, self.epoch, _PERMUTATION))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x_float, y)`` batches of the current epoch."""
        order = self.order()
        epoch, bs = self.epoch, self.batch_size
        if self.world_size == 1:
            for b in range(self.start_batch, len(self)):
                yield self._make(order[b * bs : (b + 1) * bs], epoch, b)
            return
        n, usable = self.num_samples, self._usable()
        for b in range(self.start_batch, len(self)):
            start, stop = b * bs, min((b + 1) * bs, usable)
            share = (stop - start) // self.world_size
            offset = self.rank * share
            index = order[start + offset : start + offset + share]
            # augmentation draws for the batch one process would make (the tail left out included)
            yield self._make(index, epoch, b, offset, min((b + 1) * bs, n) - start)

    def _make(
        self, index: torch.Tensor, epoch: int, batch: int, offset: int = 0, total: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``batch`` of ``epoch`` (or this process's part ``offset ..`` of its ``total``
        images): gather, move, augment (train), normalise."""
        if self.index is not None:
            index = self.index[index]
        if self.device.type == "cuda":
            xb = torch.empty((index.numel(), *self.x.shape[1:]), dtype=torch.uint8, pin_memory=True)
            yb = torch.empty((index.numel(),), dtype=torch.int64, pin_memory=True)
            torch.index_select(self.x, 0, index, out=xb)
            torch.index_select(self.y, 0, index, out=yb)
            xb = xb.to(self.device, non_blocking=True)
            yb = yb.to(self.device, non_blocking=True)
        else:
            xb = self.x.index_select(0, index).to(self.device)
            yb = self.y.index_select(0, index).to(self.device)
        if self.train:
            xb = augment_batch(xb, make_generator(self.seed, epoch, _AUGMENT, batch), self.pad,
                               offset, total)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb.float().sub_(self._shift).mul_(self._scale), yb

