"""The arrival processes of ``--split``: the seeded Dirichlet split, its counts, and a plugin's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from toolbox.data.arrivals import allocate, class_counts, dirichlet_counts, dirichlet_shards, parse_split
from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl
from toolbox.options import RunOptions
from toolbox.plugin_host.manager import load_plugins
from toolbox.run.inputs import split_validation_and_shards

LABELS = torch.arange(10).repeat_interleave(60)  # 10 classes of 60


def test_same_seed_same_split_other_seed_other_split() -> None:
    first = dirichlet_shards(LABELS, 4, 0, 10, 0.3)
    again = dirichlet_shards(LABELS, 4, 0, 10, 0.3)
    other = dirichlet_shards(LABELS, 4, 1, 10, 0.3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))


def test_totals_kept_disjoint_every_class_present_and_imbalanced() -> None:
    shards = dirichlet_shards(LABELS, 4, 3, 10, 0.3)
    assert [s.numel() for s in shards] == [100] * 4  # per_class x classes, as the stratified split
    everything = torch.cat(shards)
    assert everything.unique().numel() == everything.numel()
    counts = class_counts(LABELS, shards)
    assert all(sum(step[c] for step in counts) > 0 for c in range(10))
    assert max(max(step) for step in counts) > 20  # not the balanced 10 per class
    whole = dirichlet_shards(LABELS, 3, 0, None, 0.5)  # per_class None: count // shards of every class
    assert [s.numel() for s in whole] == [200] * 3


def test_hand_computed_counts() -> None:
    assert allocate([0.5, 0.3, 0.2], 10, [10, 10, 10]) == [5, 3, 2]
    assert allocate([0.45, 0.45, 0.1], 4, [4, 4, 4]) == [2, 2, 0]  # 1.8 1.8 0.4: largest remainders
    assert allocate([0.9, 0.1], 10, [3, 10]) == [3, 7]  # class 0 has only 3 left: the rest goes to class 1
    # step 1: 2.8 1.2 0 -> 3 1 0; step 2: 2.4 1.6 0 -> 2 2 0; class 2 arrived nowhere: it takes one
    # image in step 1 (proportions tie at 0: the first step) from that step's largest class
    assert dirichlet_counts([[0.7, 0.3, 0.0], [0.6, 0.4, 0.0]], [4, 4], [10, 10, 10]) == [[2, 1, 1], [2, 2, 0]]


def test_a_tiny_label_vector_with_a_huge_alpha_is_balanced() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    shards = dirichlet_shards(labels, 2, 5, None, 1e9)  # proportions 1/3 each: 2 per class per step
    assert class_counts(labels, shards) == [[2, 2, 2], [2, 2, 2]]
    assert sorted(torch.cat(shards).tolist()) == list(range(12))


def test_bad_splits_are_one_sentence() -> None:
    assert parse_split("dirichlet:0.3") == ("dirichlet", 0.3) and parse_split("stratified") == ("stratified", None)
    for bad in ("dirichlet", "dirichlet:-1", "dirichlet:nan", "stratified:2", ""):
        with pytest.raises(UsageError, match="--split"):
            RunOptions(split=bad).validate()
    with pytest.raises(UsageError, match="drop --split"):
        RunOptions(split="dirichlet:1", shards=["a", "b"]).validate()


class Reversed:
    """An arrival process of a plugin: shards of the stratified split, in reverse order."""

    @hookimpl
    def toolbox_arrivals(self, labels, num_shards, seed, per_class, split):
        if split != "reversed":
            return None
        from toolbox.data import split_shards

        return split_shards(labels, num_shards, seed, per_class)[::-1]


def test_a_plugin_supplies_its_own_arrival_process() -> None:
    pm = load_plugins([], extra={"reversed": Reversed()})
    options = RunOptions(steps=3, per_class=5, split="reversed", val_per_class=2)
    validation, shards = split_validation_and_shards(LABELS, options, pm)
    plain, plain_shards = split_validation_and_shards(LABELS, RunOptions(steps=3, per_class=5, val_per_class=2), pm)
    assert torch.equal(validation, plain) and all(torch.equal(a, b) for a, b in zip(shards, plain_shards[::-1]))
    with pytest.raises(UsageError, match="no enabled plugin supplies it"):
        split_validation_and_shards(LABELS, options, load_plugins([]))


def test_a_run_records_its_arrivals(tmp_path: Path) -> None:
    from toolbox.run.start import start_run

    out = tmp_path / "run"
    start_run({"dataset": "synthetic", "steps": 2, "epochs": 1, "batch_size": 64, "arch": "cifar_resnet20",
               "split": "dirichlet:0.3", "seed": 2, "out": str(out), "tensorboard": False}).execute()
    recorded = json.loads((out / "shards.json").read_text())
    assert recorded["split"] == "dirichlet:0.3"
    assert [sum(c) for c in recorded["class_counts"]] == [len(s) for s in recorded["shards"]]
    text = (out / "results.md").read_text()
    first = " ".join(map(str, recorded["class_counts"][0]))
    assert "Arrivals (--split dirichlet:0.3)" in text and f"| 1 | {len(recorded['shards'][0])} |" in text and first in text
