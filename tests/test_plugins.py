"""Plugin manager: discovery through entry points, validation, dispatch order."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from toolbox.errors import UsageError
from toolbox.hookspecs import hookimpl
from toolbox.options import PluginOption
from toolbox.plugin_host.calls import declared_options, model_surgery
from toolbox.plugin_host.entry_points import available_plugins
from toolbox.plugin_host.manager import load_plugins, make_manager, register
from toolbox.run.start import start_run


class MockPlugin:
    """Implements every hook and records each call, like Avalanche's MockPlugin."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    @hookimpl
    def toolbox_options(self) -> list[PluginOption]:
        return [PluginOption("mock_weight", float, 0.0, "weight of the mock loss")]

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        self.calls.append(("configure", options.plugin["mock_weight"]))

    @hookimpl
    def toolbox_phases(self, step: int, num_steps: int) -> list[str]:
        return ["sparsify"] if step < num_steps else []

    @hookimpl
    def toolbox_data_schedule(self, step: int, phase: str, shards: list[torch.Tensor]) -> None:
        self.calls.append(("data_schedule", step, phase))
        return None

    @hookimpl
    def toolbox_phase_start(self, ctx: Any) -> None:
        self.calls.append(("phase_start", ctx.step, ctx.phase, ctx.teacher is not None))

    @hookimpl
    def toolbox_model_surgery(self, ctx: Any, model: Any) -> None:
        self.calls.append(("prune", ctx.step, ctx.phase))

    @hookimpl
    def toolbox_epoch_start(self, ctx: Any) -> None:
        self.calls.append(("epoch_start", ctx.step, ctx.phase, ctx.epoch))

    @hookimpl
    def toolbox_loss(self, ctx: Any, batch: Any, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.calls or self.calls[-1][0] != "batch":
            self.calls.append(("batch", ctx.step, ctx.phase))
        self._order = ["loss"]
        return {"mock": logits.sum() * ctx.options.plugin["mock_weight"]}

    @hookimpl
    def toolbox_regularize(self, ctx: Any, model: Any) -> None:
        assert any(p.grad is not None for p in model.parameters())
        self._order.append("regularize")

    @hookimpl
    def toolbox_batch_end(self, ctx: Any, model: Any) -> None:
        self._order.append("batch_end")
        assert self._order == ["loss", "regularize", "batch_end"]

    @hookimpl
    def toolbox_epoch_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        assert "mock" in metrics and "ce" in metrics
        metrics["mock_seen"] = 1.0
        self.calls.append(("epoch_end", ctx.step, ctx.phase, ctx.epoch))

    @hookimpl
    def toolbox_phase_end(self, ctx: Any) -> None:
        ctx.phase_metrics["mock_metric"] = float(ctx.step)
        self.calls.append(("phase_end", ctx.step, ctx.phase))


def test_every_hook_fires_in_order(tiny_values: dict[str, Any]) -> None:
    mock = MockPlugin()
    run = start_run({**tiny_values, "steps": 2, "mock_weight": "0.0"}, extra_plugins={"mock": mock})
    results = run.execute()
    expected: list[tuple[Any, ...]] = [("configure", 0.0)]
    for step, phases in ((1, ["learn", "sparsify"]), (2, ["learn"])):
        for phase in phases:
            first = (step, phase) == (1, "learn")
            expected += [("data_schedule", step, phase), ("phase_start", step, phase, not first),
                         ("prune", step, phase), ("epoch_start", step, phase, 0),
                         ("batch", step, phase), ("epoch_end", step, phase, 0), ("phase_end", step, phase)]
    assert mock.calls == expected
    assert [p["phase"] for p in results["steps"][0]["phases"]] == ["learn", "sparsify"]
    assert results["steps"][1]["phases"][0]["mock_metric"] == 2.0
    lines = (Path(tiny_values["out"]) / "metrics.jsonl").read_text()
    assert '"mock_seen": 1.0' in lines and '"mock": ' in lines


def test_builtins_come_from_entry_points() -> None:
    plugins = available_plugins()
    assert {"finetune", "joint"} <= set(plugins)
    assert plugins["finetune"].source == "built-in"


def test_unknown_plugin_lists_known_ones() -> None:
    with pytest.raises(UsageError, match=r"Unknown plugin 'nope'; known plugins: .*finetune.*joint"):
        load_plugins(["nope"])
    with pytest.raises(UsageError, match="listed twice"):
        load_plugins(["finetune", "finetune"])


def test_third_party_entry_point_is_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "thirdparty_plugin.py").write_text(textwrap.dedent('''
        from toolbox.hookspecs import hookimpl

        class Replay:
            @hookimpl
            def toolbox_data_schedule(self, step, shards):
                return shards[0]
    '''))
    dist = tmp_path / "thirdparty_plugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-plugin\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[toolbox.plugins]\nreplay = thirdparty_plugin:Replay\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    info = available_plugins()["replay"]
    assert info.source == "thirdparty-plugin 1.2.3"
    pm = load_plugins(["replay"])
    shards = [torch.tensor([1, 2]), torch.tensor([3, 4])]
    assert pm.hook.toolbox_data_schedule(step=2, phase="learn", shards=shards).tolist() == [1, 2]
    sys.modules.pop("thirdparty_plugin", None)


def test_misspelled_hook_and_bad_argument_are_refused() -> None:
    class Misspelled:
        @hookimpl
        def toolbox_regularise(self, ctx: Any, model: Any) -> None: ...

    class WrongArgs:
        @hookimpl
        def toolbox_loss(self, ctx: Any, outputs: Any) -> None: ...

    with pytest.raises(UsageError, match="Plugin 'typo' does not fit the toolbox hooks.*toolbox_regularise"):
        register(make_manager(), Misspelled(), "typo")
    with pytest.raises(UsageError, match="Plugin 'args' does not fit the toolbox hooks.*outputs"):
        register(make_manager(), WrongArgs(), "args")


def test_conflicting_option_declarations() -> None:
    class A:
        @hookimpl
        def toolbox_options(self) -> list[PluginOption]:
            return [PluginOption("T", float, 4.0)]

    class B:
        @hookimpl
        def toolbox_options(self) -> list[PluginOption]:
            return [PluginOption("T", float, 2.0)]

    pm = make_manager()
    register(pm, A(), "a")
    register(pm, B(), "b")
    with pytest.raises(UsageError, match="disagree on option 'T'"):
        declared_options(pm)


def test_prune_calls_are_chained_in_plugin_order() -> None:
    class Wrap:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @hookimpl
        def toolbox_prune(self, ctx: Any, model: Any) -> Any:
            return model + [self.tag]

    class Surgery:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @hookimpl
        def toolbox_model_surgery(self, ctx: Any, model: Any) -> Any:
            return model + [self.tag]

    pm = make_manager()
    with pytest.warns(DeprecationWarning, match="toolbox_prune is deprecated"):  # the alias still works, and says so
        register(pm, Wrap("first"), "first")
    register(pm, Surgery("second"), "second")
    assert model_surgery(pm, None, []) == ["first", "second"]
