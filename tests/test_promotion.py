"""What each step changed, and the promotion gate: flips and per-class changes on hand-computed
predictions, the rule, a step made worse on purpose (judged on validation images, never the
test set), `toolbox step` + `toolbox promote` through the CLI, and the atomic switch."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cli_process import toolbox_cli as run_cli
from fabricate import write_image
from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl
from toolbox.run import lock as runlock
from toolbox.run import promotion
from toolbox.run.flips import flip_rates, per_class_top1, update_record
from toolbox.run.start import resume_run, start_run
from toolbox.run.update_report import _changes_in_class_order, plot_class_changes

COLOURS = {"blue": (0, 0, 220), "green": (0, 200, 0), "red": (220, 0, 0)}  # sorted: class 0, 1, 2


# ------------------------------------------------------------------ the maths, by hand
def test_flips_and_per_class_changes_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    before = torch.tensor([0, 0, 1, 0, 2, 1])  # right: 0, 1, 2, 4
    after = torch.tensor([0, 1, 1, 1, 2, 2])   # right: 0, 2, 3, 4, 5
    assert flip_rates(before, after, labels) == {"nfr": pytest.approx(1 / 6), "pfr": pytest.approx(2 / 6)}
    assert per_class_top1(after, labels, 4) == [50.0, 100.0, 100.0, None]
    record = update_record(before, after, labels, ["a", "b", "c", "d"], against_step=2)
    assert record["against_step"] == 2
    assert record["per_class"] == {"a": {"top1": 50.0, "change": -50.0}, "b": {"top1": 100.0, "change": 50.0},
                                   "c": {"top1": 100.0, "change": 50.0}, "d": {"top1": None, "change": None}}
    assert flip_rates(before[:0], after[:0], labels[:0]) == {"nfr": 0.0, "pfr": 0.0}


def test_the_rule_reads_and_judges() -> None:
    numbers = {"top1": 80.0, "prev": 80.4, "nfr": 0.02, "pfr": 0.05}
    assert promotion.judge("top1>=prev-0.5", numbers, first=False) == (True, "meets top1>=prev-0.5")
    assert promotion.judge("top1>=prev-0.5,nfr<=0.01", numbers, first=False) == (False, "fails nfr<=0.01")
    assert promotion.judge("top1>prev", numbers, first=False)[0] is False
    assert promotion.judge("top1 >= 79.5, pfr > .04", numbers, first=False)[0] is True
    assert promotion.judge("top1>=prev+5", numbers, first=True) == (True, "the first model")
    assert promotion.judge("always", numbers, first=False) == (True, "--promote always")
    assert promotion.judge("top1>=prev", None, first=False)[0] is True  # no validation images: said, promoted
    for bad in ("top1>=", "acc>=1", "nfr<=prev", "top1=>prev", ""):
        with pytest.raises(UsageError, match="--promote"):
            promotion.parse_rule(bad)


def test_a_redone_step_is_judged_against_the_model_promoted_before_it(tmp_path: Path) -> None:
    (tmp_path / "serve").mkdir()
    for k in (1, 2):
        (tmp_path / "serve" / f"step{k}.pt").write_bytes(b"model %d" % k)
    promotion.record_decision(tmp_path, {"step": 1, "promoted": True, "reason": "r", "by": "gate"},
                              tmp_path / "serve" / "step1.pt")
    promotion.record_decision(tmp_path, {"step": 2, "promoted": True, "reason": "r", "by": "gate"},
                              tmp_path / "serve" / "step2.pt")
    history = promotion.read_history(tmp_path)
    assert promotion.promoted_before(history, 2) == 1 and promotion.promoted_before(history, 3) == 2
    promotion.record_decision(tmp_path, {"step": 2, "promoted": False, "reason": "r", "by": "gate"},
                              tmp_path / "serve" / "step2.pt")  # step 2 redone after a kill
    history = promotion.read_history(tmp_path)
    assert [(d["step"], d["promoted"]) for d in history["decisions"]] == [(1, True), (2, False)]


# ------------------------------------------------------------------ runs on colour folders
def colour_folder(root: Path, per_class: int, seed: int, labels: dict[str, str] | None = None) -> Path:
    """``root/<class>/`` of noisy 8 x 8 solid-colour images; ``labels`` maps a class folder to the
    colour its images have (default: its own)."""
    rng = np.random.default_rng(seed)
    for name in COLOURS:
        colour = np.array(COLOURS[(labels or {}).get(name, name)], dtype=np.int16)
        for i in range(per_class):
            pixels = np.clip(colour + rng.integers(0, 35, size=(8, 8, 3)), 0, 255).astype(np.uint8)
            write_image(root / name / f"{seed}_{i}.png", pixels)
    return root


def folder_values(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"arch": "cifar_resnet20", "plugins": "finetune", "image_size": 8, "epochs": 10, "batch_size": 12,
            "eval_batch_size": 64, "lr": 0.05, "seed": 0, "device": "cpu", "tensorboard": False,
            "out": str(tmp_path / "run"), **more}


class Saboteur:
    """Makes step 2's model predict class g^-1(colour): right on a test folder whose class c holds
    colour g(c) images, wrong on every validation image."""

    def __init__(self, shift: list[int]) -> None:
        self.shift = shift

    @hookimpl
    def toolbox_phase_end(self, ctx: Any) -> None:
        if ctx.step == 2:
            head = ctx.model.get_classifier()
            with torch.no_grad():
                head.weight.copy_(head.weight[self.shift].clone())
                head.bias.copy_(head.bias[self.shift].clone())


def sabotaged_run(tmp_path: Path) -> tuple[dict[str, Any], Saboteur]:
    """Two colour step folders, a validation folder and a test folder whose class c holds images of
    colour g(c): a model right on the validation folder is wrong on the test folder, and the
    sabotaged step-2 model the other way round. Returns the run's values and the saboteur."""
    g = {"blue": "green", "green": "red", "red": "blue"}
    shards = [str(colour_folder(tmp_path / f"s{k}", 12, seed=k)) for k in (1, 2)]
    values = folder_values(tmp_path, shards=",".join(shards), val=str(colour_folder(tmp_path / "val", 6, seed=8)),
                           test=str(colour_folder(tmp_path / "test", 6, seed=9, labels=g)))
    names = sorted(COLOURS)
    return values, Saboteur([names.index(g[c]) for c in names])


def test_a_step_made_worse_on_validation_is_not_promoted_even_when_better_on_test(tmp_path: Path) -> None:
    values, saboteur = sabotaged_run(tmp_path)
    start_run(values, extra_plugins={"saboteur": saboteur}).execute()
    runlock.release_all()
    run = Path(values["out"])
    steps = json.loads((run / "results.json").read_text())["steps"]
    history = json.loads((run / "serve" / "history.json").read_text())
    assert steps[0]["phases"][0]["val_top1"] == 100.0 and steps[0]["top1"] < 50.0
    assert steps[1]["phases"][0]["val_top1"] == 0.0 and steps[1]["top1"] == 100.0  # better on test, worse on val
    assert steps[1]["promotion"]["promoted"] is False
    gate = history["decisions"][1]
    assert (gate["step"], gate["promoted"], gate["against_step"]) == (2, False, 1)
    assert gate["numbers"]["top1"] == 0.0 and gate["numbers"]["prev"] == 100.0 and gate["numbers"]["nfr"] == 1.0
    assert gate["reason"] == "fails top1>=prev-0.5"
    assert history["current"]["step"] == 1
    assert (run / "serve" / "current.pt").read_bytes() == (run / "serve" / "step1.pt").read_bytes()
    update = steps[1]["update"]  # what changed is reported on the test images: all flips positive
    assert (update["nfr"], update["against_step"]) == (0.0, 1) and update["pfr"] > 0.5
    assert "| 2 | 0.00 |" in (run / "results.md").read_text() and "**no**: fails top1>=prev-0.5" in (
        run / "results.md").read_text()
    assert (run / "class_top1_change.png").stat().st_size > 0


def test_the_class_plot_reads_a_run_resumed_across_the_change_that_named_classes(tmp_path: Path) -> None:
    """Steps reviewed before classes had names key them by label number; they line up by position."""
    def step(number: int, keys: list[str], changes: list[float | None]) -> dict[str, Any]:
        per_class = {k: {"change": c} for k, c in zip(keys, changes)}
        return {"step": number, "update": {"per_class": per_class, "against_step": number - 1, "nfr": 0.1}}

    steps = [step(2, ["0", "1", "2"], [-5.0, None, 3.0]), step(3, ["blue", "green", "red"], [1.0, 2.0, -4.0])]
    assert _changes_in_class_order(steps[0]["update"]["per_class"], ["blue", "green", "red"]) == [-5.0, None, 3.0]
    assert _changes_in_class_order({"red": {"change": 2.0}}, ["blue", "green", "red"]) == [None, None, 2.0]
    assert plot_class_changes(steps, tmp_path / "c.png", "a run") is True
    assert (tmp_path / "c.png").stat().st_size > 0


class CrashAtStep2:
    """Kills the run (an exception) as step 2 starts, after step 1 and its decision are on disk."""

    @hookimpl
    def toolbox_phase_start(self, ctx: Any) -> None:
        if ctx.step == 2:
            raise KeyboardInterrupt


def test_a_rule_given_with_resume_judges_the_steps_still_to_come(tmp_path: Path) -> None:
    values, saboteur = sabotaged_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        start_run(values, extra_plugins={"saboteur": saboteur, "crash": CrashAtStep2()}).execute()
    runlock.release_all()
    run = Path(values["out"])
    assert promotion.read_history(run)["decisions"][0]["rule"] == "top1>=prev-0.5"
    resume_run(run, extra_plugins={"saboteur": saboteur}, changes={"promote": "always"}).execute()
    runlock.release_all()
    history = json.loads((run / "serve" / "history.json").read_text())
    assert [(d["step"], d["rule"], d["promoted"]) for d in history["decisions"]] == [
        (1, "top1>=prev-0.5", True), (2, "always", True)]  # the old rule would have refused step 2
    assert history["decisions"][1]["reason"] == "--promote always" and history["current"]["step"] == 2
    assert "promote: always" in (run / "config.yaml").read_text()


def test_toolbox_step_judges_and_toolbox_promote_rolls_back(tmp_path: Path) -> None:
    s1, s2 = colour_folder(tmp_path / "s1", 10, seed=1), colour_folder(tmp_path / "s2", 10, seed=2)
    val, test = colour_folder(tmp_path / "val", 4, seed=8), colour_folder(tmp_path / "test", 4, seed=9)
    values = folder_values(tmp_path, shards=str(s1), test=str(test), val=str(val), epochs=2, batch_size=10,
                           promote="top1>=prev-0.5,nfr<=0.5")
    start_run(values).execute()
    runlock.release_all()
    run = Path(values["out"])
    assert promotion.read_history(run)["current"]["reason"] == "the first model"
    second = run_cli("step", str(run), "--data", str(s2))
    assert second.returncode == 0, second.stderr
    history = json.loads((run / "serve" / "history.json").read_text())
    gate = history["decisions"][-1]
    assert (gate["step"], gate["against_step"], gate["rule"]) == (2, 1, "top1>=prev-0.5,nfr<=0.5")
    assert set(gate["numbers"]) == {"top1", "prev", "nfr", "pfr"}
    assert history["current"]["step"] == (2 if gate["promoted"] else 1)
    back = run_cli("promote", str(run), "--step", "1")
    assert back.returncode == 0 and "serve/current.pt is now step 1's model" in back.stdout
    history = json.loads((run / "serve" / "history.json").read_text())
    assert history["current"]["step"] == 1 and history["decisions"][-1]["by"] == "toolbox promote"
    assert (run / "serve" / "current.pt").read_bytes() == (run / "serve" / "step1.pt").read_bytes()
    with pytest.raises(UsageError, match="pick one of the steps 1, 2"):
        promotion.promote_by_hand(run, 5)


def test_a_reader_never_sees_a_partial_current_file(tmp_path: Path) -> None:
    (tmp_path / ".toolbox-run").write_text("run\n")
    serve = tmp_path / "serve"
    serve.mkdir()
    files = {k: bytes([k]) * 3_000_000 for k in (1, 2)}  # large enough for a torn copy to show
    for k, data in files.items():
        (serve / f"step{k}.pt").write_bytes(data)
    promotion.promote_by_hand(tmp_path, 1)
    seen, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set() and len(seen) < 400:
            seen.append((serve / "current.pt").read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(30):
        promotion.promote_by_hand(tmp_path, 2 - i % 2)
    stop.set()
    thread.join(timeout=30)
    assert seen and all(data in (files[1], files[2]) for data in seen)
    assert len(promotion.read_history(tmp_path)["decisions"]) == 31
