"""``toolbox export``: a served model (dense or compact) as ONNX or TorchScript, checked first.

The model is exported with a dynamic batch axis (input ``images``, N x C x H x W float32, already
normalized; output ``logits``, N x classes), then run once through its runtime (ONNX Runtime or
``torch.jit.load``) on a seeded probe batch. The file is written (atomically) only when the
runtime's logits match the PyTorch model's to ``TOLERANCE`` (max absolute difference, fp32);
otherwise :class:`~toolbox.errors.UsageError` names the difference and nothing is written.

What a user needs beside the graph travels with it: the preprocessing recipe, the class names,
arch and step, in the ONNX ``metadata_props`` (keys ``toolbox.*``, values JSON) or, for
TorchScript, in the archive (``extra/toolbox.json``) and a sidecar ``F.json``. ``--out`` never
replaces a file the toolbox did not write (one without those marks).

The ONNX graph comes from the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``):
the torch.export-based one needs ``onnxscript``, one more dependency, and gives the same graph
for these convolutional networks.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from toolbox.data.recipe import checkpoint_recipe
from toolbox.deploy.model_file import resolve_model
from toolbox.errors import UsageError
from toolbox.plugin_host.entry_points import import_model_packages
from toolbox.storage import checkpoint as ckpt
from toolbox.storage.atomic import atomic_write_bytes, atomic_write_json

FORMATS = ("onnx", "torchscript")
MARK = "toolbox-export/1"  # the value of "format" that says the toolbox wrote a file
TOLERANCE = 1e-4
PROBE_BATCH = 3  # not the traced batch (2): the probe also proves the batch axis is dynamic
OPSET = 17
EXTRA_NAME = "toolbox.json"


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how closely the runtime matched PyTorch."""

    out: Path
    sidecar: Path | None
    max_abs_diff: float
    source: Path
    step: int


def metadata(data: dict[str, Any], source: Path) -> dict[str, Any]:
    """The facts that travel with an export: the toolbox's mark, arch, step, classes, the
    preprocessing recipe (:mod:`toolbox.data.recipe`) and the input / output names."""
    recipe = checkpoint_recipe(data, source)
    return {"format": MARK, "arch": data["arch"], "step": int(data["step"]), "phase": data.get("phase"),
            "classes": list(recipe["classes"]), "preprocessing": recipe, "input": "images",
            "output": "logits", "source": str(source)}


def probe_batch(input_size: tuple[int, int, int], batch: int = PROBE_BATCH) -> torch.Tensor:
    """A seeded batch of normalized-looking images (standard normal), the same on every call."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *input_size, generator=generator)


# ----------------------------------------------------------------------------- ONNX
def onnx_bytes(model: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    """``model`` as an ONNX file (batch axis dynamic) with ``meta`` in its ``metadata_props``."""
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices are not the user's concern
        torch.onnx.export(model, (example,), buffer, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"toolbox.{key}", json.dumps(value)
    return proto.SerializeToString()


def run_onnx(blob: bytes, images: np.ndarray) -> np.ndarray:
    """Logits of ONNX Runtime (CPU) for ``images`` through the ONNX file ``blob``."""
    import onnxruntime as ort

    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0]


def onnx_metadata(path: Path) -> dict[str, Any] | None:
    """The ``toolbox.*`` metadata of an ONNX file the toolbox wrote, else ``None``."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key[len("toolbox."):]: json.loads(p.value) for p in proto.metadata_props if p.key.startswith("toolbox.")}
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return None
    return props if props.get("format") == MARK else None


# ----------------------------------------------------------------------------- TorchScript
def torchscript_bytes(model: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    """``model`` traced to TorchScript, with ``meta`` as the archive's ``extra/toolbox.json``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        torch.jit.save(traced, buffer, _extra_files={EXTRA_NAME: json.dumps(meta)})
    return buffer.getvalue()


def run_torchscript(blob: bytes, images: np.ndarray) -> np.ndarray:
    """Logits of ``torch.jit.load`` (CPU) for ``images`` through the TorchScript archive ``blob``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


def torchscript_metadata(path: Path) -> dict[str, Any] | None:
    """The ``extra/toolbox.json`` of a TorchScript archive the toolbox wrote, else ``None``."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_NAME}"))
            meta = json.loads(archive.read(name))
    except Exception:  # noqa: BLE001 - not a zip, no entry, bad JSON: not ours
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == MARK else None


def sidecar_path(out: Path) -> Path:
    """The JSON sidecar of a TorchScript export: ``F.json`` beside ``F``."""
    return out.with_name(out.name + ".json")


def _ours_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except Exception:  # noqa: BLE001
        return False
    return isinstance(data, dict) and data.get("format") == MARK


EXPORTERS: dict[str, tuple[Callable[..., bytes], Callable[[bytes, np.ndarray], np.ndarray]]] = {
    "onnx": (onnx_bytes, run_onnx), "torchscript": (torchscript_bytes, run_torchscript)}
OWNERS: dict[str, Callable[[Path], dict[str, Any] | None]] = {"onnx": onnx_metadata, "torchscript": torchscript_metadata}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 120 characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:120].rstrip(".")


def check_out(out: Path, fmt: str) -> None:
    """Refuse an ``out`` (or its sidecar) that exists and was not written by a toolbox export."""
    targets = [(out, lambda p: OWNERS[fmt](p) is not None)]
    if fmt == "torchscript":
        targets.append((sidecar_path(out), _ours_json))
    for path, ours in targets:
        if path.is_dir():
            raise UsageError(f"--out {path} is a folder; pass a file name such as {path / ('model.' + fmt)}.")
        if path.exists() and not ours(path):
            raise UsageError(f"{path} exists and was not written by toolbox export; choose another --out "
                             "or move that file away.")


def export_model(model_path: str | Path, fmt: str, out: str | Path, tolerance: float = TOLERANCE) -> ExportResult:
    """Export the model at ``model_path`` (a serve file, checkpoint or run directory) to ``out``
    as ``fmt``, written only when its runtime's logits match PyTorch's to ``tolerance``."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt} is not known; use one of {', '.join(FORMATS)}.")
    out = Path(out)
    check_out(out, fmt)
    source = resolve_model(model_path)
    data = ckpt.load_checkpoint(source)
    import_model_packages()
    model = ckpt.model_from_checkpoint(data).float().cpu().eval()
    meta = metadata(data, source)
    recipe = meta["preprocessing"]
    input_size = (int(recipe["channels"]), int(recipe["image_size"]), int(recipe["image_size"]))
    to_bytes, run = EXPORTERS[fmt]
    try:
        blob = to_bytes(model, probe_batch(input_size, 2), meta)
    except Exception as exc:  # noqa: BLE001 - an operator the exporter lacks, a model it cannot trace
        raise UsageError(f"{source} cannot be exported to {fmt} ({first_line(exc)}); try the other --format.") from None
    probe = probe_batch(input_size)
    with torch.no_grad():
        expected = model(probe).numpy()
    try:
        got = run(blob, probe.numpy())
    except Exception as exc:  # noqa: BLE001 - a graph its runtime cannot run fails the check
        raise UsageError(f"The {fmt} export of {source} does not run in its runtime ({first_line(exc)}); "
                         "nothing was written.") from None
    diff = float(np.abs(np.asarray(got, dtype=np.float64) - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= tolerance:
        shape = "" if got.shape == expected.shape else f" (shape {tuple(got.shape)} instead of {tuple(expected.shape)})"
        raise UsageError(f"The {fmt} export of {source} differs from the PyTorch model by {diff:.3g} "
                         f"(max abs logit difference{shape}, allowed {tolerance:g}); nothing was written.")
    atomic_write_bytes(out, blob)
    sidecar = None
    if fmt == "torchscript":
        sidecar = sidecar_path(out)
        atomic_write_json(sidecar, {**meta, "max_abs_diff": diff})
    return ExportResult(out=out, sidecar=sidecar, max_abs_diff=diff, source=source, step=int(data["step"]))
