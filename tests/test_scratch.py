"""scratch and ctx.create_model: a fresh model of the run's architecture, independent of earlier weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.context import Context
from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl
from toolbox.options import RunOptions
from toolbox.plugin_host.manager import load_plugins
from toolbox.run.start import start_run
from toolbox.storage import checkpoint as ckpt
from toolbox_plugins.scratch import Scratch


class Probe:
    """Keeps what ``ctx.create_model()`` gives in step 2's learn phase (twice, after seeding)."""

    def __init__(self) -> None:
        self.models: list[nn.Module] = []

    @hookimpl
    def toolbox_phase_start(self, ctx: Any) -> None:
        if ctx.step == 2:
            for _ in range(2):
                torch.manual_seed(7)
                self.models.append(ctx.create_model())


def test_create_model_builds_the_runs_architecture_from_the_torch_rng(tiny_values: dict[str, Any]) -> None:
    probe = Probe()
    values = {**tiny_values, "steps": 2, "channels_last": True, "model_kwargs": {"drop_rate": 0.1}}
    run = start_run(values, extra_plugins={"probe": probe})
    run.execute()
    first, second = probe.models
    assert type(first) is type(run.model) and first.num_classes == run.data.num_classes
    assert first.drop_rate == 0.1 and first.training
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), run.model.state_dict().values()))
    conv = next(m for m in first.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.shape[1] == run.data.in_chans


def test_create_model_outside_a_run_is_one_sentence() -> None:
    ctx = Context(options=RunOptions(), model=nn.Linear(1, 1), device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="needs a run"):
        ctx.create_model()
    with pytest.raises(RuntimeError, match="needs a run"):
        ctx.train_batches()


def test_scratch_replaces_the_model_at_learn_phases_after_step_one() -> None:
    plugin, fresh = Scratch(), nn.Linear(2, 2)
    model = nn.Linear(2, 2)
    for step, phase, expected in ((1, "learn", None), (2, "sparsify", None), (2, "learn", fresh)):
        ctx = Context(options=RunOptions(plugins=["scratch"]), model=model, device=torch.device("cpu"), step=step,
                      phase=phase, model_factory=lambda: fresh, masks={"bn": torch.ones(2, dtype=torch.bool)})
        assert plugin.toolbox_model_surgery(ctx=ctx, model=model) is expected
        assert bool(ctx.masks) == (expected is None)


@pytest.mark.parametrize("other", ["finetune", "aod", "lwf", "ewc", "shrink_perturb"])
def test_plugins_that_carry_the_previous_model_are_refused(other: str) -> None:
    with pytest.raises(UsageError, match=f"scratch and {other} cannot run together"):
        load_plugins(["scratch", other])  # the combination is refused when the plugins load
    load_plugins(["scratch", "joint"])  # scratch on all the data: accepted


class Meddle:
    """Scales every weight by 0.5 after each step-1 batch: a different step-1 model."""

    @hookimpl
    def toolbox_batch_end(self, ctx: Any, model: nn.Module) -> None:
        if ctx.step == 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.5)


def test_step_two_does_not_depend_on_step_ones_weights(tiny_values: dict[str, Any]) -> None:
    values = {**tiny_values, "steps": 2, "plugins": "scratch"}
    start_run(values).execute()
    meddled_out = Path(tiny_values["out"]).with_name("meddled")
    start_run({**values, "out": str(meddled_out)}, extra_plugins={"meddle": Meddle()}).execute()

    def weights(out: Path, step: int) -> dict[str, torch.Tensor]:
        return ckpt.load_checkpoint(out / "checkpoints" / f"step{step}_learn.pt")["state_dict"]

    plain_out = Path(tiny_values["out"])
    assert not torch.equal(weights(plain_out, 1)["fc.weight"], weights(meddled_out, 1)["fc.weight"])
    a, b = weights(plain_out, 2), weights(meddled_out, 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_steps_through_the_cli(tiny_values: dict[str, Any]) -> None:
    out = Path(tiny_values["out"])
    args = ["run", "--plugins", "scratch", "--dataset", "synthetic", "--steps", "2", "--epochs", "1",
            "--batch-size", "64", "--device", "cpu", "--threads", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "results.json").read_text())["steps"]) == 2
