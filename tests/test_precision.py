"""``--precision auto``: native bf16 detection (monkeypatched capabilities) and its resolution."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from toolbox.errors import UsageError
from toolbox.options import build_options
from toolbox.runtime import device
from toolbox.runtime.device import autocast_context

CPU = torch.device("cpu")


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch):
    """Set what /proc/cpuinfo and torch's CPU checks report; the detection cache is cleared around."""
    def set_flags(proc: set[str], from_torch: set[str] = frozenset()) -> None:
        monkeypatch.setattr(device, "_proc_cpuinfo_flags", lambda: set(proc))
        monkeypatch.setattr(device, "_torch_cpu_flags", lambda: set(from_torch))
        device.cpu_bf16_features.cache_clear()

    yield set_flags
    device.cpu_bf16_features.cache_clear()


@pytest.mark.parametrize("proc,from_torch,expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, set(), "bf16"),
    ({"avx512f", "amx_tile", "amx_bf16"}, set(), "bf16"),
    (set(), {"amx_bf16"}, "bf16"),  # no /proc/cpuinfo (macOS, Windows): torch's own check
    ({"avx2", "avx512f", "avx512_vnni"}, set(), "fp32"),  # AVX-512 without BF16: emulated, fp32
    ({"fp", "asimd", "bf16"}, set(), "fp32"),  # not a flag counted as native here
    (set(), set(), "fp32"),
])
def test_auto_resolves_to_bf16_only_with_native_cpu_bf16(cpu_flags: Any, proc: set[str], from_torch: set[str],
                                                         expected: str) -> None:
    cpu_flags(proc, from_torch)
    assert device.resolve_precision("auto", CPU) == expected
    assert device.native_bf16(CPU) == (expected == "bf16")


def test_explicit_precisions_are_kept(cpu_flags: Any) -> None:
    cpu_flags({"avx512_bf16"})
    for value in ("fp32", "bf16", "fp16"):
        assert device.resolve_precision(value, CPU) == value
    cpu_flags(set())
    assert device.resolve_precision("bf16", CPU) == "bf16"


def test_cuda_asks_torch_for_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_precision("auto", cuda) == "fp32"
    asked: list[bool] = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        assert device.resolve_precision("auto", cuda) == expected
    assert asked == [False, False]  # emulated bf16 does not count
    assert device.resolve_precision("auto", torch.device("mps")) == "fp32"


def test_autocast_context_resolves_auto(cpu_flags: Any) -> None:
    cpu_flags({"amx_bf16"})
    with autocast_context(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    cpu_flags(set())
    with autocast_context(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_auto_is_accepted_and_unknown_values_are_one_sentence() -> None:
    assert build_options({"precision": "auto"}, {}).precision == "auto"
    with pytest.raises(UsageError, match="auto"):
        build_options({"precision": "fp8"}, {})


def test_a_run_records_the_resolved_precision(cpu_flags: Any, tiny_values: dict[str, Any]) -> None:
    from toolbox.run.start import start_run

    for flags, expected in (({"avx512_bf16"}, "bf16"), (set(), "fp32")):
        cpu_flags(flags)
        out = Path(tiny_values["out"]).with_name(f"run-{expected}")
        run = start_run({**tiny_values, "precision": "auto", "steps": 1, "out": str(out)})
        assert run.options.precision == expected
        assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == expected
        assert run.results()["config"]["precision"] == expected
