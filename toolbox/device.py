"""Where and in which precision a run computes: device selection and autocast."""

from __future__ import annotations

import contextlib

import torch

from toolbox.errors import UsageError


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; otherwise the named device, which must work here.

    An unknown or absent device is a :class:`UsageError` with one sentence (checked by allocating
    a tensor on it, before any data is loaded).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "meta":
        raise UsageError("--device meta holds no data and cannot train; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here; use --device cpu or auto.")
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--device {name} cannot be used here ({reason}); use --device cpu or auto.") from None
    return device


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16`` (CPU or CUDA) and ``fp16`` (CUDA); a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
