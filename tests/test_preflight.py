"""Preflight: verdicts, sentences and dry runs on every registered backbone and on bad models."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import pytest
import torch
from rich.console import Console
from timm.models import register_model
from torch import nn

from toolbox.cli import check as chk
from toolbox.errors import UsageError
from toolbox.preflight import analysis as pf
from toolbox.preflight import dry_run as dryrun

PIPELINE = ["sst", "aod", "msl", "prune"]
STAGES = [name for name, _ in dryrun.DRY_RUN_STAGES]
NO_BN = "test_efficientnet_gn"  # timm's own tiny test model: GroupNorm, no BatchNorm


class GroupedNet(nn.Module):
    """conv-BN, a grouped conv (groups=4)-BN, a 1x1 conv without BN, linear head."""

    default_cfg = {"input_size": (3, 16, 16)}

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def get_classifier(self) -> nn.Module:
        """The linear head (never a pruning root)."""
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x``."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.conv3(x).mean((2, 3)))


@register_model
def preflight_test_grouped(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3,
                           **kwargs: Any) -> GroupedNet:
    """A tiny model with a grouped conv, registered in timm for these tests."""
    return GroupedNet(num_classes=num_classes, in_chans=in_chans)


GOOD = [("cifar_resnet20", {"shortcut": "B"}, 32), ("cifar_resnet56", {"shortcut": "B"}, 32),
        ("cifar_mobilenetv2", {}, 32), ("tinyimagenet_mobilenetv2", {}, 64), ("resnet18", {}, 32)]


@pytest.mark.parametrize("arch,kwargs,size", GOOD, ids=[g[0] for g in GOOD])
def test_good_backbones_pass_every_stage(arch: str, kwargs: dict[str, Any], size: int) -> None:
    report = pf.preflight(arch, num_classes=10, in_chans=3, image_size=size, model_kwargs=kwargs, plugins=PIPELINE)
    assert report.verdict == pf.OK, report.reason
    assert report.reason.startswith(f"{arch} can be sparsified, re-initialized and pruned")
    assert [r.name for r in report.dry_run] == STAGES
    assert all(r.ok for r in report.dry_run), [(r.name, r.detail) for r in report.dry_run]
    assert "outputs identical" in report.stage("reload").detail
    assert report.has_batchnorm and report.groups > 0 and not report.unprunable_bns
    assert sum(s.filters for s in report.stages) == report.filters
    assert sum(s.groups for s in report.stages) == report.groups


def test_stages_are_top_level_modules_or_numbered_stage_containers() -> None:
    resnet = pf.preflight("cifar_resnet20", image_size=32, plugins=PIPELINE, dry_run=False)
    assert [s.stage for s in resnet.stages] == ["bn1", "layer1", "layer2", "layer3"]
    mbv2 = pf.preflight("cifar_mobilenetv2", image_size=32, plugins=PIPELINE, dry_run=False)
    assert "blocks.3" in [s.stage for s in mbv2.stages] and not mbv2.dry_run


def test_option_a_warns_with_the_shortcut_layers_and_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    report = pf.preflight("cifar_resnet20", image_size=32, model_kwargs={"shortcut": "A"}, plugins=PIPELINE)
    assert report.verdict == pf.WARN
    assert "layer2.0.shortcut, layer3.0.shortcut" in report.reason
    assert "use shortcut option B (model_kwargs: {shortcut: B})" in report.reason
    assert report.pad_shortcuts == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert "layer1.0.bn2" in report.unprunable_bns and "layer1.0.bn1" not in report.unprunable_bns
    assert all(r.ok for r in report.dry_run)  # block-internal channels still prune exactly
    with caplog.at_level(logging.WARNING, logger="toolbox"):
        assert pf.check_run("cifar_resnet20", {"shortcut": "A"}, 10, 3, 32, ["sst"], 0.5) is not None
    assert "shortcut option B" in caplog.text


def test_model_without_batchnorm_is_refused_in_one_sentence() -> None:
    report = pf.preflight(NO_BN, image_size=32, plugins=["sst", "aod"])
    sentence = (f"{NO_BN} has no BatchNorm layer, so sparsity training has nothing to act on; "
                "pick a backbone with BatchNorm.")
    assert report.verdict == pf.REFUSE and report.reason == sentence
    assert not report.has_batchnorm and not report.dry_run
    with pytest.raises(UsageError) as info:
        pf.check_run(NO_BN, {}, 10, 3, 32, ["polarization"], 0.5)
    assert sentence in str(info.value) and str(info.value).count("\n") == 0


def test_without_a_sparsity_plugin_nothing_is_refused_or_checked() -> None:
    report = pf.preflight(NO_BN, image_size=32, plugins=["finetune"])
    assert report.verdict == pf.WARN and report.reason.startswith("With a sparsity or pruning plugin")
    assert pf.check_run(NO_BN, {}, 10, 3, 32, ["finetune"], 0.5) is None
    assert not pf.needs_check(["finetune", "lwf", "msl"])
    assert pf.needs_check(["slimming"]) and pf.needs_check(["aod"]) and pf.needs_check(["prune"])


def test_grouped_conv_breaks_compaction_refused_only_with_prune() -> None:
    report = pf.preflight("preflight_test_grouped", image_size=16, plugins=["sst", "aod", "prune"])
    assert report.grouped_convs == ["conv2 (groups=4)"]
    assert report.stage("select").ok and report.stage("re-initialize").ok
    assert report.stage("compact").ok is False and report.stage("reload").ok is None
    assert report.verdict == pf.REFUSE
    assert "failed at compact" in report.reason and "conv2 (groups=4)" in report.reason
    assert "leave prune out" in report.reason
    assert report.convs_without_bn == ["conv3"]
    without_prune = pf.preflight("preflight_test_grouped", image_size=16, plugins=["sst", "aod"])
    assert without_prune.verdict == pf.WARN


def test_trace_failure_is_a_refusal_naming_the_image_size() -> None:
    report = pf.preflight("test_maxvit", image_size=32, plugins=["sst"])  # its windows need other sizes
    assert report.verdict == pf.REFUSE and "(3, 32, 32)" in report.reason and "check the image size" in report.reason


def test_unknown_arch_and_bad_ratio_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="Unknown --arch"):
        pf.preflight("no_such_model_xyz")
    with pytest.raises(UsageError, match="ratio"):
        pf.preflight("cifar_resnet20", ratio=1.0)


def test_global_random_state_is_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    pf.preflight("cifar_resnet20", image_size=16, plugins=["sst"])
    assert torch.equal(before, torch.get_rng_state())


def test_ratio_zero_still_dry_runs_at_the_fallback_ratio() -> None:
    report = pf.preflight("cifar_resnet20", image_size=16, plugins=["sst"], ratio=0.0)
    assert report.verdict == pf.OK and "ratio 0.5" in report.stage("select").detail


def test_dataset_shapes() -> None:
    assert chk.dataset_shape("cifar100") == (3, 32, 100)
    assert chk.dataset_shape("tiny_imagenet") == (3, 64, 200)
    assert chk.dataset_shape("fashion_mnist") == (1, 32, 10)
    assert chk.dataset_shape(None) == (3, None, 10)
    with pytest.raises(UsageError, match="Unknown dataset"):
        chk.dataset_shape("no_such_dataset")


def test_check_arguments_from_flags_and_config_values() -> None:
    args = chk.check_arguments({"arch": "cifar_resnet20", "plugins": "sst, aod", "model_kwargs": "{shortcut: A}",
                               "ratio": "0.3", "dataset": "cifar100"})
    assert args == {"arch": "cifar_resnet20", "plugins": ["sst", "aod"], "dataset": "cifar100", "data_root": None,
                    "model_kwargs": {"shortcut": "A"}, "ratio": 0.3}
    config = chk.check_arguments({"arch": "x", "plugins": ["sst"], "model_kwargs": {"shortcut": "B"},
                                 "plugin": {"ratio": 0.4}})
    assert config["ratio"] == 0.4 and config["model_kwargs"] == {"shortcut": "B"}
    assert chk.check_arguments({"arch": "x"})["plugins"] is None
    with pytest.raises(UsageError, match="--arch NAME"):
        chk.check_arguments({})
    with pytest.raises(UsageError, match="YAML mapping"):
        chk.parse_model_kwargs("A")


def test_check_command_prints_the_report() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, record=False)
    report = chk.check_command("cifar_resnet20", None, "fashion_mnist", None, {"shortcut": "A"}, 0.5, console=console)
    text = buffer.getvalue()
    assert report.input_size == (1, 32, 32) and report.plugins == chk.default_check_plugins()
    for needle in ("preflight: cifar_resnet20", "prunable channels per stage", "layer3", "findings",
                   "dry run on a dummy batch", "reload", "passed", "verdict: WARN", "shortcut option B"):
        assert needle in text, needle
    assert chk.exit_code(report) == 0
    refused = chk.check_command(NO_BN, ["sst"], "synthetic", None, {}, 0.5, console=Console(file=io.StringIO()))
    assert chk.exit_code(refused) == 1


def test_failed_rows_render() -> None:
    report = pf.preflight("preflight_test_grouped", image_size=16, plugins=["prune"])
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(chk.render(report))
    assert "FAILED" in buffer.getvalue() and "skipped" in buffer.getvalue()


@pytest.mark.slow
def test_check_run_is_fast_on_resnet110() -> None:
    start = time.perf_counter()
    report = pf.check_run("cifar_resnet110", {"shortcut": "B"}, 100, 3, 32, ["sst", "aod", "msl"], 0.5)
    assert report is not None and report.verdict == pf.OK
    assert time.perf_counter() - start < 10
