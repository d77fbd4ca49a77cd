"""Checkpoints: round trip, atomic writes, safe loading, clear mismatch errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from toolbox.errors import CheckpointError
from toolbox.models import build_model
from toolbox.storage import atomic as tbio
from toolbox.storage import checkpoint as ckpt


def _checkpoint(model: torch.nn.Module, arch: str = "cifar_resnet20") -> dict:
    masks = {"layer1.0.bn1": torch.tensor([True, False] * 8)}
    return ckpt.make_checkpoint(model, arch=arch, num_classes=10, in_chans=3, model_kwargs={},
                                step=2, phase="sparsify", masks=masks, records={"sst": {"s": [1.0]}},
                                options={"seed": 0}, results=[{"step": 1, "top1": 50.0}])


def test_round_trip(tmp_path: Path) -> None:
    model = build_model("cifar_resnet20", 10, 3)
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, _checkpoint(model))
    data = ckpt.load_checkpoint(path)
    assert (data["arch"], data["step"], data["phase"]) == ("cifar_resnet20", 2, "sparsify")
    assert data["masks"]["layer1.0.bn1"].dtype == torch.bool
    rebuilt = ckpt.model_from_checkpoint(data)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(rebuilt(x), model(x))
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.json"
    tbio.atomic_write_json(path, {"ok": 1})

    def crash(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        tbio.atomic_write_json(path, {"ok": 2})
    assert path.read_text().strip().startswith("{") and '"ok": 1' in path.read_text()
    assert list(tmp_path.iterdir()) == [path]


def test_truncated_checkpoint_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, _checkpoint(build_model("cifar_resnet20", 10, 3)))
    path.write_bytes(path.read_bytes()[: 5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt.load_checkpoint(path)


class Exploit:
    """Pickles into a call of os.system: must never run on load."""

    def __reduce__(self):  # noqa: D105
        return (os.system, ("echo pwned > /tmp/toolbox-pwned",))


def test_code_carrying_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        ckpt.load_checkpoint(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(plain)


def test_foreign_and_mismatched_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a toolbox checkpoint"):
        ckpt.load_checkpoint(path)
    data = _checkpoint(build_model("cifar_resnet20", 10, 3))
    with pytest.raises(CheckpointError, match="cifar_resnet20 with 10 classes but this run uses cifar_resnet32 with 10"):
        ckpt.load_state(build_model("cifar_resnet32", 10, 3), data, "cifar_resnet32", 10)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
