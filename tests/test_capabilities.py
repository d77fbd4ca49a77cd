"""Capabilities, declared phases and the target schedule: what replaced plugin names in the core."""

from __future__ import annotations

import pytest
import torch

from toolbox.errors import UsageError
from toolbox.plugin_host import capabilities as cap
from toolbox.plugin_host.entry_points import load_installed
from toolbox.plugin_host.phases import declared_phases, installed_phases
from toolbox.sparsity.target_schedule import TargetSchedule


class Distiller:
    provides = frozenset({cap.DISTILL_PREVIOUS})
    conflicts = frozenset({cap.DISTILL_PREVIOUS})


class NeedsSparsify:
    requires = frozenset({cap.SPARSIFY})


class OldStyleSparsifier:
    provides_sparsify = True


def test_conflicts_and_requirements_are_refused_with_one_sentence() -> None:
    with pytest.raises(UsageError, match="^a and b both distill from the previous model"):
        cap.check_combination({"a": Distiller(), "b": Distiller()})
    with pytest.raises(UsageError, match="^msl needs sparsify phases"):
        cap.check_combination({"msl": NeedsSparsify()})
    cap.check_combination({"msl": NeedsSparsify(), "old": OldStyleSparsifier()})  # the old spelling counts
    cap.check_combination({"a": Distiller(), "msl": NeedsSparsify(), "s": OldStyleSparsifier()})


def test_installed_plugins_are_recognized_by_capability() -> None:
    assert cap.providers(["sst", "aod", "prune", "lwf", "nope"], cap.SPARSIFY) == ["sst"]
    assert cap.providers(["sst", "aod", "prune", "lwf"], cap.COMPACT) == ["prune"]
    assert cap.providers(["aod", "lwf"], cap.DISTILL_PREVIOUS) == ["aod", "lwf"]
    with pytest.raises(UsageError, match="finetune and joint both choose the data"):
        cap.check_combination(load_installed(["finetune", "joint"]))


def test_phases_come_from_the_plugins_that_declare_them() -> None:
    class Early:
        phases = {"warmup": 1}

    class Late:
        phases = {"polish": 3, "warmup": 1}

    assert declared_phases([Late(), Early()]) == {"learn": 0, "warmup": 1, "polish": 3}
    with pytest.raises(UsageError, match="phase 'warmup' at two places"):
        declared_phases([Early(), type("Other", (), {"phases": {"warmup": 2}})()])
    assert installed_phases() == {"learn": 0, "sparsify": 1, "compact": 2}


def test_target_schedule_reaches_zero_at_its_deadline() -> None:
    schedule = TargetSchedule(total_steps=10, target_at=0.5)
    assert schedule.deadline == 5 and not schedule.held(4) and schedule.held(5)
    gamma = torch.tensor(1.0)
    for done in range(schedule.deadline):  # the largest magnitude falls linearly to exactly 0
        gamma = torch.clamp(gamma - schedule.threshold(gamma, done), min=0.0)
    assert float(gamma) == 0.0
    assert TargetSchedule(total_steps=3, target_at=0.01).deadline == 1
