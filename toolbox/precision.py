"""``--precision auto``: bf16 autocast where the hardware computes bf16 natively, else fp32.

Native bf16 means: on the CPU, AVX-512 BF16 or AMX-BF16 instructions (without them oneDNN emulates
bf16 and autocast gains little or loses); on CUDA, a device that supports bf16 without emulation
(compute capability 8.0 or newer). Detection runs once per process at run time; a run records the
resolved value (``bf16`` or ``fp32``) in config.yaml, its checkpoints and results, so a resumed or
compared run uses what was actually used.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

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
