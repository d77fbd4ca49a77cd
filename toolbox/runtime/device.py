"""Where and in which precision a run computes: device selection, autocast, ``--precision auto``.

``--precision auto`` is bf16 autocast where the hardware computes bf16 natively, else fp32.
Native bf16 means: on the CPU, AVX-512 BF16 or AMX-BF16 instructions (without them oneDNN emulates
bf16 and autocast gains little or loses); on CUDA, a device that supports bf16 without emulation
(compute capability 8.0 or newer). Detection runs once per process at run time; a run records the
resolved value (``bf16`` or ``fp32``) in config.yaml, its checkpoints and results, so a resumed or
compared run uses what was actually used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

from toolbox.errors import UsageError

log = logging.getLogger("toolbox")


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
    """Autocast for ``bf16`` (CPU or CUDA) and ``fp16`` (CUDA); a no-op for ``fp32``; ``auto`` is
    resolved for ``device`` (:func:`resolve_precision`)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


#: CPU feature flags (as /proc/cpuinfo names them) that compute bf16 natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def _proc_cpuinfo_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS, Windows)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def _torch_cpu_flags() -> set[str]:
    """The native bf16 flags torch's own CPU detection reports (private API; empty where missing)."""
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found = set()
    for flag, name in checks.items():
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                found.add(flag)
        except Exception:  # noqa: BLE001 (a detection failure means: not detected)
            continue
    return found


@functools.cache
def cpu_bf16_features() -> tuple[str, ...]:
    """The native bf16 features of this CPU (``avx512_bf16``, ``amx_bf16``); empty: none."""
    flags = _proc_cpuinfo_flags() | _torch_cpu_flags()
    return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether the CUDA device computes bf16 natively (not emulated)."""
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch: no including_emulation (and no emulation)
            return bool(torch.cuda.is_bf16_supported())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CPU: AVX-512 BF16 or AMX; CUDA: no emulation)."""
    device = torch.device(device)
    if device.type == "cpu":
        return bool(cpu_bf16_features())
    if device.type == "cuda":
        return cuda_native_bf16(device)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where ``device`` computes bf16 natively, else ``fp32``; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def run_precision(precision: str, device: torch.device) -> str:
    """:func:`resolve_precision` for a run, which records the result; ``auto`` is logged once."""
    resolved = resolve_precision(precision, device)
    if precision == "auto":
        log.info("--precision auto: %s on %s.", resolved, device)
    return resolved
