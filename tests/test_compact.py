"""Compaction with torch-pruning: exactness, structure records, checkpoints, the prune plugin."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

import toolbox  # noqa: F401  (registers the CIFAR backbones)
from toolbox.context import Context
from toolbox.errors import CheckpointError, UsageError
from toolbox.options import RunOptions
from toolbox.pruning.compaction import bn_scale_importance, compact
from toolbox.pruning.cost import compaction_report
from toolbox.pruning.prune_file import prune_checkpoint
from toolbox.run.start import resume_run, start_run
from toolbox.sparsity import channels as ch
from toolbox.storage import checkpoint as ckpt
from toolbox.storage.structure import apply_structure, merge_structures
from toolbox_plugins.prune import Prune

BACKBONES = [
    ("cifar_resnet20", {}, 32),
    ("cifar_resnet56", {}, 32),
    ("cifar_resnet20", {"shortcut": "A"}, 32),
    ("cifar_mobilenetv2", {}, 32),
    ("tinyimagenet_mobilenetv2", {}, 32),
    ("resnet18", {}, 32),
]


def build(arch: str, kwargs: dict[str, Any], seed: int = 0) -> nn.Module:
    """A model with random BN statistics and affine parameters (so betas are not 0)."""
    model = timm.create_model(arch, num_classes=10, **kwargs).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def mask_randomly(model: nn.Module, x: torch.Tensor, ratio: float = 0.4, seed: int = 1) -> dict[str, torch.Tensor]:
    """Select a random ``ratio`` of the filters, zero their BN scales (not betas), return the masks."""
    graph = ch.channel_groups(model, example_inputs=x[:1])
    g = torch.Generator().manual_seed(seed)
    selection = ch.select_smallest([torch.rand(gr.size, generator=g) for gr in graph.groups], ratio)
    masks = ch.selection_to_masks(model, graph, selection)
    with torch.no_grad():
        for name, mask in masks.items():
            ch.module(model, name).weight[mask] = 0.0
    return masks


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch,kwargs,size", BACKBONES,
                         ids=["resnet20", "resnet56", "resnet20A", "mbv2", "tiny_mbv2", "timm_resnet18"])
def test_compact_is_exact_and_rebuilds(arch: str, kwargs: dict[str, Any], size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    masked = build(arch, kwargs)
    masks = mask_randomly(masked, x)
    small, record = compact(masked, masks=masks, example_inputs=x[:1])
    expected = outputs(masked, x)
    assert torch.allclose(outputs(small, x), expected, atol=1e-5, rtol=0)
    assert n_params(small) < 0.8 * n_params(masked)
    assert small.get_classifier().out_features == 10
    stats = record["compactions"][0]
    assert stats["removed"] > 0 and stats["unfolded"] == []
    # plain data; a fresh model replays it and loads the compact weights
    record = json.loads(json.dumps(record))
    fresh = apply_structure(timm.create_model(arch, num_classes=10, **kwargs), record)
    fresh.load_state_dict(small.state_dict())
    assert torch.equal(outputs(fresh, x), outputs(small, x))


def test_option_a_prunes_block_internal_channels_only() -> None:
    x = torch.randn(2, 3, 32, 32)
    masked = build("cifar_resnet20", {"shortcut": "A"})
    masks = mask_randomly(masked, x, ratio=0.5)
    small, record = compact(masked, masks=masks, example_inputs=x[:1])
    touched = {op["module"] for op in record["ops"]}
    assert touched and all(".conv1" in n or ".bn1" in n or ".conv2" in n for n in touched)
    assert not any(op["module"].endswith("bn2") or op["dim"] == "out" and op["module"].endswith("conv2")
                   for op in record["ops"])
    assert small.layer3[2].bn2.num_features == 64 and small.layer1[0].bn1.num_features < 16


def test_carriers_keep_borders_exact_at_other_input_sizes() -> None:
    masked = build("cifar_resnet20", {})
    masks = mask_randomly(masked, torch.randn(1, 3, 32, 32))
    small, record = compact(masked, masks=masks, example_inputs=torch.zeros(1, 3, 32, 32))
    assert record["compactions"][0]["carriers"] > 0
    for size in (8, 48):
        x = torch.randn(2, 3, size, size)
        assert torch.allclose(outputs(small, x), outputs(masked, x), atol=1e-5, rtol=0)
    inexact, _ = compact(masked, masks=masks, example_inputs=torch.zeros(1, 3, 32, 32), exact=False)
    assert n_params(inexact) < n_params(small)


def test_round_to_keeps_widths_multiples_and_exact() -> None:
    x = torch.randn(2, 3, 32, 32)
    for masked, masks in [(m, mask_randomly(m, x)) for m in [build("cifar_resnet20", {})]] + [
            (build("cifar_resnet20", {}, seed=3), None)]:
        small, record = compact(masked, masks=masks, ratio=None if masks else 0.5, example_inputs=x[:1], round_to=8)
        widths = [m.num_features for m in small.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(w % 8 == 0 for w in widths) and record["compactions"][0]["spared"] > 0
        if masks:
            assert torch.allclose(outputs(small, x), outputs(masked, x), atol=1e-5, rtol=0)


def test_ratio_uses_bn_scale_importance_and_keeps_the_input_model() -> None:
    import torch_pruning as tp

    model = build("cifar_resnet20", {})
    x = torch.zeros(1, 3, 32, 32)
    graph = ch.channel_groups(model, example_inputs=x)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    for ours, theirs in zip(bn_scale_importance(model, graph, dg), ch.unit_importance(model, graph)):
        assert torch.allclose(ours, theirs)
    before = copy.deepcopy(model.state_dict())
    small, record = compact(model, ratio=0.5, example_inputs=x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    stats = record["compactions"][0]
    assert stats["removed"] + stats["carriers"] == round(0.5 * stats["filters"])
    assert outputs(small, torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UsageError, match="ratio"):
        compact(model, ratio=1.0, example_inputs=x)
    with pytest.raises(UsageError, match="masks"):
        compact(model, example_inputs=x)


def test_compacting_twice_merges_records() -> None:
    x = torch.randn(2, 3, 32, 32)
    masked = build("cifar_mobilenetv2", {})
    first, rec1 = compact(masked, masks=mask_randomly(masked, x), example_inputs=x[:1])
    second, rec2 = compact(first, ratio=0.3, example_inputs=x[:1])
    merged = merge_structures(rec1, rec2)
    assert len(merged["ops"]) == len(rec1["ops"]) + len(rec2["ops"]) and len(merged["compactions"]) == 2
    fresh = apply_structure(timm.create_model("cifar_mobilenetv2", num_classes=10), merged)
    fresh.load_state_dict(second.state_dict())
    assert torch.equal(outputs(fresh, x), outputs(second, x))
    with pytest.raises(CheckpointError, match="does not have|channels"):
        apply_structure(timm.create_model("cifar_resnet20", num_classes=10), merged)


def test_compaction_report_counts_and_times() -> None:
    model = build("cifar_resnet20", {})
    small, _ = compact(model, ratio=0.5, example_inputs=torch.zeros(1, 3, 16, 16))
    report = compaction_report(model, small, (3, 16, 16), eval_fn=lambda m: 50.0, repeats=1, batch_sizes=(1, 2))
    assert report["macs_after"] < report["macs_before"] and 0 < report["macs_ratio"] < 1
    assert report["params_ratio"] < 1 and report["top1_change"] == 0.0
    assert report["latency_b1_ms_before"] > 0 and "latency_b2_ratio" in report
    assert all(isinstance(v, float) for v in report.values())


def save_masked_checkpoint(path: Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = build("cifar_resnet20", {})
    masks = mask_randomly(model, torch.randn(1, 3, 16, 16))
    data = ckpt.make_checkpoint(model, arch="cifar_resnet20", num_classes=10, in_chans=3, model_kwargs={},
                                step=1, phase="sparsify", masks=masks, records={"sst": {"step1": {}}},
                                options={"dataset": "synthetic"}, results=[])
    ckpt.save_checkpoint(path, data)
    return model, masks


def test_prune_checkpoint_writes_a_reloadable_compact_checkpoint(tmp_path: Path) -> None:
    masked, _ = save_masked_checkpoint(tmp_path / "in.pt")
    report = prune_checkpoint(tmp_path / "in.pt", tmp_path / "out.pt", repeats=0)
    assert report["macs_ratio"] < 1 and report["filters_removed"] > 0
    data = ckpt.load_checkpoint(tmp_path / "out.pt")
    assert data["masks"] == {} and data["records"]["sst"] == {"step1": {}}
    x = torch.randn(2, 3, 16, 16)
    reloaded = ckpt.model_from_checkpoint(data)
    assert torch.allclose(outputs(reloaded, x), outputs(masked, x), atol=1e-5, rtol=0)
    # a second compaction of the compact checkpoint (no masks left): needs a ratio
    with pytest.raises(UsageError, match="--ratio"):
        prune_checkpoint(tmp_path / "out.pt", tmp_path / "out2.pt", repeats=0)
    prune_checkpoint(tmp_path / "out.pt", tmp_path / "out2.pt", ratio=0.3, repeats=0)
    twice = ckpt.load_checkpoint(tmp_path / "out2.pt")
    assert len(twice["records"]["structure"]["compactions"]) == 2
    assert outputs(ckpt.model_from_checkpoint(twice), x).shape == (2, 10)


def test_prune_plugin_compacts_with_masks_and_empties_them() -> None:
    plugin = Prune()
    options = RunOptions(plugin={"prune_ratio": 0.0, "compact_epochs": 0, "compact_latency_repeats": 0})
    plugin.toolbox_configure(options=options)
    assert options.phase_epochs["compact"] == 0
    assert plugin.toolbox_phases(step=2, num_steps=2) == ["compact"] and plugin.toolbox_phases(step=1, num_steps=2) is None
    model = build("cifar_resnet20", {})
    masks = mask_randomly(model, torch.randn(1, 3, 16, 16))
    ctx = Context(options=options, model=model, device=torch.device("cpu"), phase="compact", masks=dict(masks))
    ctx.input_size = (3, 16, 16)  # type: ignore[attr-defined]
    small = plugin.toolbox_model_surgery(ctx=ctx, model=model)
    assert small is not None and ctx.masks == {} and ctx.records["structure"]["ops"]
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(outputs(small, x), outputs(model, x), atol=1e-5, rtol=0)
    plugin.toolbox_phase_end(ctx=ctx)
    assert ctx.phase_metrics["macs_ratio"] < 1 and "latency_b256_ms_after" not in ctx.phase_metrics
    with pytest.raises(UsageError, match="prune-ratio"):
        Prune().toolbox_configure(options=RunOptions(plugin={"prune_ratio": 1.0}))


def test_compact_phase_in_a_run_resume_and_init(tmp_path: Path) -> None:
    values = {"arch": "cifar_resnet20", "dataset": "synthetic", "steps": 2, "epochs": 1, "batch_size": 64,
              "eval_batch_size": 256, "lr": 0.05, "seed": 0, "device": "cpu", "plugins": [],
              "prune_ratio": 0.5, "compact_latency_repeats": 1, "out": str(tmp_path / "run")}
    run = start_run(dict(values), extra_plugins={"prune": Prune()})
    results = run.execute()
    phases = results["steps"][-1]["phases"]
    assert [p["phase"] for p in phases] == ["learn", "compact"]
    compact_record = phases[-1]
    assert compact_record["macs_ratio"] < 1 and compact_record["latency_b256_ms_after"] > 0
    assert compact_record["macs"] < phases[0]["macs"]
    final = ckpt.phase_checkpoint_path(tmp_path / "run", 2, "compact")
    shapes = {k: v.shape for k, v in run.model.state_dict().items()}
    resumed = resume_run(tmp_path / "run", extra_plugins={"prune": Prune()})
    assert {k: v.shape for k, v in resumed.model.state_dict().items()} == shapes
    train_values = {k: v for k, v in values.items() if k not in ("prune_ratio", "compact_latency_repeats")}
    train_values.update(steps=1, out=str(tmp_path / "train"))
    trainer = start_run(train_values, init=final)
    out = trainer.execute(only_phase="learn")
    assert out["steps"][0]["params"] == compact_record["params"]
    data = ckpt.load_checkpoint(ckpt.phase_checkpoint_path(tmp_path / "train", 1, "learn"))
    assert data["records"]["structure"]["ops"]


class GatedNet(nn.Module):
    """conv-BN-ReLU, a squeeze-excitation gate (mixes channels), conv-BN, classifier."""

    default_cfg = {"input_size": (3, 8, 8)}

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.se1, self.se2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        gate = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3))))))
        x = x * gate[:, :, None, None]
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


def test_constants_that_are_not_constant_are_reported_unfolded() -> None:
    model = GatedNet().eval()
    with torch.no_grad():
        model.bn1.bias.uniform_(0.5, 1.0)
        model.bn1.weight[:3] = 0.0
    masks = {"bn1": torch.tensor([True] * 3 + [False] * 5)}
    small, record = compact(model, masks=masks)
    assert record["compactions"][0]["unfolded"] == ["conv2"]
    assert small.bn1.num_features == 5 and small.conv2.in_channels == 5
