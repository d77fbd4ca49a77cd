"""Multi-process training under ``torchrun``: launch detection, the process group, collectives.

``torchrun --nproc_per_node N -m toolbox.cli run ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set. :func:`init` joins them in one process group (gloo for CPU
tensors, and nccl for CUDA tensors where CUDA is present) with a timeout
(``$TOOLBOX_DIST_TIMEOUT`` seconds, default 600), so a collective that waits for a dead or stuck
peer fails instead of hanging forever. Without torchrun, or with ``WORLD_SIZE=1``, every helper
here does nothing beyond what one process would do, so single-process runs are unchanged.

Conventions of a multi-process run (see docs/distributed.md):

* ``--batch-size`` is the global batch; each process trains on its ``1 / WORLD_SIZE`` of it.
* Parameters are identical on every process (DistributedDataParallel averages the gradients in
  ``backward``); buffers (BN running statistics) are rank 0's, broadcast at every forward and at
  the end of every phase.
* Only rank 0 (:func:`is_main`) touches the run directory. Files are read by rank 0 and the
  result is shared (:func:`run_on_main`), so the other processes need no shared file system and
  a failure (a missing file, a full disk) is raised on every process alike.
"""

from __future__ import annotations

import atexit
import os
import pickle
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from toolbox.errors import UsageError

RANK_ENV, WORLD_ENV, LOCAL_RANK_ENV = "RANK", "WORLD_SIZE", "LOCAL_RANK"
TIMEOUT_ENV = "TOOLBOX_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
T = TypeVar("T")


# ----------------------------------------------------------------------------- who am I
def launched() -> bool:
    """Whether this process is one of several that torchrun started (``WORLD_SIZE`` > 1)."""
    try:
        return RANK_ENV in os.environ and int(os.environ.get(WORLD_ENV, "1")) > 1
    except ValueError:
        return False


def active() -> bool:
    """Whether a process group is up (after :func:`init` in a torchrun job)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: 0 on one process."""
    if active():
        return dist.get_rank()
    return int(os.environ[RANK_ENV]) if launched() else 0


def world_size() -> int:
    """The number of processes: 1 on one process."""
    if active():
        return dist.get_world_size()
    return int(os.environ[WORLD_ENV]) if launched() else 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``): which GPU it uses."""
    return int(os.environ.get(LOCAL_RANK_ENV, "0")) if launched() else 0


def is_main() -> bool:
    """Whether this process is rank 0: the one that logs and writes the run directory."""
    return rank() == 0


# ----------------------------------------------------------------------------- set-up
def timeout() -> timedelta:
    """The process group's timeout: ``$TOOLBOX_DIST_TIMEOUT`` seconds, default 600."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UsageError(f"${TIMEOUT_ENV}={text!r} must be a positive number of seconds.")
    return timedelta(seconds=seconds)


def init() -> None:
    """Join the torchrun job's process group (once; nothing without torchrun).

    The backend is gloo for CPU tensors plus nccl for CUDA tensors where CUDA is present (each
    collective uses the one that matches its tensors' device), and the process's current CUDA
    device is ``cuda:LOCAL_RANK``.
    """
    if not launched() or active():
        return
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        if local_rank() < torch.cuda.device_count():
            torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=timeout())
    atexit.register(destroy)


def destroy() -> None:
    """Leave the process group (nothing when none is up)."""
    if active():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun a CUDA device becomes this process's own GPU, ``cuda:LOCAL_RANK``."""
    if not launched() or device.type != "cuda":
        return device
    if local_rank() >= torch.cuda.device_count():
        raise UsageError(f"torchrun started process {local_rank()} on this machine but it has only "
                         f"{torch.cuda.device_count()} CUDA device(s); pass --nproc-per-node "
                         f"{torch.cuda.device_count()} or --device cpu.")
    return torch.device("cuda", local_rank())


def local_batch_size(global_batch: int) -> int:
    """Each process's share of the global ``--batch-size``, which must divide evenly."""
    size = world_size()
    if global_batch % size:
        raise UsageError(f"--batch-size {global_batch} is the global batch and must be divisible by the "
                         f"{size} processes of this torchrun job; pass a multiple of {size}.")
    return global_batch // size


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This process's contiguous part of ``indices`` (parts differ by at most one element)."""
    return torch.tensor_split(indices, world_size())[rank()] if active() else indices


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel, for the training forward/backward only; the model
    itself on one process. The wrapper starts from rank 0's parameters and buffers."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


# ----------------------------------------------------------------------------- collectives
def barrier() -> None:
    """Wait until every process gets here."""
    if active():
        dist.barrier()


def all_true(flag: torch.Tensor | bool) -> bool:
    """Whether ``flag`` holds on every process (one all-reduce)."""
    if not active():
        return bool(flag)
    value = torch.as_tensor(flag).to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def reduce_sums(values: dict[str, torch.Tensor | float | int]) -> dict[str, float]:
    """Each value summed over all processes (one all-reduce, float64), as Python floats.

    Every process must pass the same keys. On one process the values are returned as floats.
    """
    if not active():
        return {name: float(value) for name, value in values.items()}
    names = sorted(values)
    device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    packed = torch.stack([torch.as_tensor(values[n], dtype=torch.float64).to(device).reshape(())
                          for n in names]) if names else torch.zeros(0, dtype=torch.float64)
    dist.all_reduce(packed)
    return dict(zip(names, packed.tolist()))


def mean_across(value: float) -> float:
    """The mean of ``value`` over all processes (itself on one process)."""
    if not active():
        return value
    return reduce_sums({"v": value})["v"] / world_size()


def average_gradients(module: nn.Module) -> None:
    """Average the gradients of ``module`` over all processes in place (for a network trained
    outside DistributedDataParallel, e.g. aod's mutual peer)."""
    if not active():
        return
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad.div_(world_size())


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every process (pickled; keep tensors on the CPU)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every process, in place."""
    if not active():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_contiguous():
                dist.broadcast(tensor, src)
            else:  # e.g. channels-last weights
                copy = tensor.contiguous()
                dist.broadcast(copy, src)
                tensor.copy_(copy)


def broadcast_masks(masks: dict[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Rank ``src``'s mask dict on every process, each mask on the device it had there."""
    if not active():
        return masks
    devices = {name: mask.device for name, mask in masks.items()}
    shared = broadcast_object({name: mask.detach().cpu() for name, mask in masks.items()}, src)
    return {name: mask.to(devices.get(name, mask.device)) for name, mask in shared.items()}


def run_on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run by rank 0 only; its result (or the exception it raised) on
    every process. Used for every read and write of the run directory."""
    if not active():
        return fn(*args, **kwargs)
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised on every process below
            error = exc
    shared = error
    if error is not None:
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001 - an exception that cannot travel is sent as its text
            shared = RuntimeError(f"{type(error).__name__}: {error}")
    result, shared = broadcast_object((result, shared))
    if is_main() and error is not None:
        raise error
    if shared is not None:
        raise shared
    return result


PEER_FAILURE_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out",
                        "timeout")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process died, hung or left
    (gloo and nccl raise a ``DistError`` or a ``RuntimeError`` naming the transport)."""
    if not active():
        return False
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in PEER_FAILURE_MARKERS)


def check_same(label: str, value: Any) -> None:
    """Refuse (one sentence) when ``value`` differs between processes, e.g. each process's
    options and dataset, so a job whose nodes disagree stops before training."""
    if not active():
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    odd = [r for r, v in enumerate(values) if v != values[0]]
    if not odd:
        return
    first, other = values[0], values[odd[0]]
    if isinstance(first, dict) and isinstance(other, dict):
        keys = sorted({*first, *other}, key=str)
        detail = ", ".join(f"{k}: {other.get(k)!r} vs {first.get(k)!r}" for k in keys
                           if first.get(k) != other.get(k))
    else:
        detail = f"{other!r} vs {first!r}"
    raise UsageError(f"The {label} of rank(s) {', '.join(map(str, odd))} differ from rank 0's "
                     f"({detail[:300]}); give every node the same command, data and toolbox version.")
