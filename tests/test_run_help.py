"""Options you can see: `toolbox run --help` panels per plugin, typed; `toolbox plugins show`."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.cli.help import plugin_options, requested_plugins
from toolbox.plugin_host.entry_points import available_plugins

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def help_of(*args: str) -> str:
    result = runner.invoke(app, ["run", *args, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def row(output: str, flag: str) -> str:
    """The help line of ``flag`` (its first line)."""
    (line,) = [line for line in output.splitlines() if f" {flag} " in line][:1]
    return line


def test_named_plugins_get_one_typed_panel_each() -> None:
    output = help_of("--plugins", "sst,aod,msl")
    for panel in ("Plugin sst", "Plugin aod", "Plugin msl", "More core options"):
        assert panel in output
    assert "Plugin slimming" not in output and "Plugin lwf" not in output
    for name in ("sst", "aod", "msl"):
        for opt in plugin_options(name):
            assert f"--{opt.name.replace('_', '-')} " in output, opt.name
    assert "FLOAT" in row(output, "--ema-decay") and "[default: 0.999]" in row(output, "--ema-decay")
    assert "<target|subgradient|proximal>" in row(output, "--sst-mode")
    assert "[default: target]" in row(output, "--sst-mode")
    assert "--no-msl-first-step" in row(output, "--msl-first-step")
    assert "<str>" not in output and "<int>" not in output and "<float>" not in output


def test_core_options_are_typed() -> None:
    output = help_of()
    for flag, kind in (("--steps", "INTEGER"), ("--epochs", "INTEGER"), ("--lr", "FLOAT"),
                       ("--per-class", "INTEGER"), ("--momentum", "FLOAT"), ("--plugins", "LIST")):
        assert kind in row(output, flag), flag
    assert "<cosine|multistep|constant>" in row(output, "--schedule")


def test_without_plugins_every_installed_plugin_is_shown() -> None:
    output = help_of()
    for name in available_plugins():
        assert f"Plugin {name}" in output


def test_plugins_come_from_the_flag_or_the_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("plugins: [lwf]\n")
    assert requested_plugins(["--config", str(config)]) == ["lwf"]
    assert requested_plugins(["--plugins=sst,aod", "--config", str(config)]) == ["sst", "aod"]
    assert requested_plugins([]) is None
    output = help_of("--config", str(config))
    assert "Plugin lwf" in output and "Plugin sst" not in output
    assert "not installed" in help_of("--plugins", "nope")


def test_help_leaves_parsing_alone(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--plugins", "sst", "--sst-mode", "sideways", "--dataset", "synthetic",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--sst-mode must be one of target, subgradient, proximal" in result.output


def test_plugins_show() -> None:
    result = runner.invoke(app, ["plugins", "show", "sst"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Selective sparsity training" in result.output and "built-in" in result.output
    assert "hooks: " in result.output and "batch_end" in result.output
    assert "--sst-mode" in result.output and "target|subgradient|proximal" in result.output
    assert "FLOAT" in result.output
    result = runner.invoke(app, ["plugins", "show", "nope"])
    assert result.exit_code == 2 and "Unknown plugin 'nope'; known plugins:" in result.output
