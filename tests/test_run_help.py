"""Options you can see: `toolbox run --help` typed and readable at 80 columns, panels for the plugins named;
`toolbox plugins show`."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.cli.help import plugin_options, requested_plugins
from toolbox.cli.plugin_docs import first_sentence, plain_text
from toolbox.plugin_host.entry_points import available_plugins

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def help_of(*args: str) -> str:
    result = runner.invoke(app, ["run", *args, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def row(output: str, flag: str) -> str:
    """The help line of ``flag`` in a panel (its first line)."""
    (line,) = [line for line in output.splitlines() if line.startswith("│ ") and f" {flag} " in line][:1]
    return line


NARROW_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from toolbox.cli.commands import app
print(json.dumps([CliRunner().invoke(app, args).output for args in json.loads(sys.argv[1])]))
"""
NARROW_COMMANDS = (("run", "--help"), ("step", "--help"), ("plugins", "show", "sst"), ("plugins", "list"))


@functools.cache
def narrow_outputs() -> dict[tuple[str, ...], str]:
    """The output of each of :data:`NARROW_COMMANDS` at 80 columns, from one fresh process (typer
    fixes its width once per process)."""
    env = {**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": "80"}
    done = subprocess.run([sys.executable, "-c", NARROW_SCRIPT, json.dumps(NARROW_COMMANDS)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(zip(NARROW_COMMANDS, json.loads(done.stdout.strip().splitlines()[-1])))


def narrow(*args: str) -> str:
    """``toolbox ARGS`` at 80 columns (one of :data:`NARROW_COMMANDS`)."""
    return narrow_outputs()[args]


def hard_breaks(output: str) -> list[tuple[str, str]]:
    """Pairs of lines of the text above the first panel where a line ends short although the next
    line's first word would have fitted: a line break inside a sentence."""
    text = [line.strip() for line in output.split("╭")[0].splitlines()]
    return [(line, following) for line, following in zip(text, text[1:])
            if line and following and not line.startswith("Usage") and len(line) + 1 + len(following.split()[0]) <= 76]


def test_named_plugins_get_one_typed_panel_each() -> None:
    output = help_of("--plugins", "sst,aod,msl")
    for panel in ("Plugin sst", "Plugin aod", "Plugin msl", "Your own images", "Training", "Machine"):
        assert panel in output
    assert "Plugin slimming" not in output and "Plugin lwf" not in output
    for name in ("sst", "aod", "msl"):
        for opt in plugin_options(name):
            assert f"--{opt.name.replace('_', '-')} " in output, opt.name
    assert "<float>" in row(output, "--ema-decay") and "[default: 0.999]" in row(output, "--ema-decay")
    assert "target, subgradient, proximal" in row(output, "--sst-mode")  # long choices go into the help
    assert "[default: target]" in row(output, "--sst-mode")
    assert "<epoch|once>" in row(output, "--sst-rerank")
    assert "--msl-first-step" in output and "--no-msl-first-step" not in output  # off by default: the flag


def test_core_options_are_typed_in_typers_own_vocabulary() -> None:
    output = help_of()
    for flag, kind in (("--steps", "<int>"), ("--epochs", "<int>"), ("--lr", "<float>"), ("--config", "<path>"),
                       ("--per-class", "<int>"), ("--momentum", "<float>"), ("--plugins", "<a,b,...>")):
        assert kind in row(output, flag), flag
    assert "cosine, multistep, constant" in row(output, "--schedule")
    assert "<learn|compact>" in row(output, "--serve")
    assert "(default: none, only the learn phase)" in row(output, "--plugins")
    for word in ("INTEGER", "FLOAT", "TEXT", "BOOLEAN"):
        assert word not in output, word
    eval_help = runner.invoke(app, ["eval", "--help"], env=WIDE).output
    assert "<int>" in row(eval_help, "--batch-size") and "<str>" in row(eval_help, "--device")
    # a bool on by default is shown as the flag that turns it off
    assert "--no-reset-optimizer" in output and "--no-channels-last" in output
    assert "--skip-bad-images" in output and "--no-skip-bad-images" not in output


def test_without_plugins_one_pointer_instead_of_every_panel() -> None:
    output = help_of()
    assert "Plugin options" in output and "--plugins sst,aod --help" in output
    for name in available_plugins():
        assert f"Plugin {name} " not in output and name in output


def test_run_help_fits_80_columns_without_breaks_inside_sentences() -> None:
    output = narrow("run", "--help")
    lines = output.splitlines()
    assert len(lines) < 130, len(lines)
    assert max(len(line) for line in lines) <= 80
    assert "…" not in output  # nothing cut off
    assert hard_breaks(output) == []
    assert hard_breaks(narrow("step", "--help")) == []  # a docstring wrapped in the source, rewrapped
    assert "Plugin options" in output and "sst" in output.split("Plugin options")[1]


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
    assert "--sst-mode" in result.output and "target, subgradient, proximal" in result.output
    assert "<float>" in result.output


def test_plugins_show_is_plain_text_and_cuts_no_flag_at_80_columns() -> None:
    output = narrow("plugins", "show", "sst")
    for markup in ("``", ":mod:", ":class:", ":func:", "*selected*"):
        assert markup not in output, markup
    assert "sst: selective sparsity training" in output and "toolbox.sparsity.channels" in output
    assert "…" not in output and max(len(line) for line in output.splitlines()) <= 80
    for opt in plugin_options("sst"):
        assert f"--{opt.name.replace('_', '-')} " in output, opt.name


def test_rest_becomes_plain_text() -> None:
    doc = ("``sst``: uses :mod:`toolbox.sparsity.channels`, :class:`~toolbox.options.RunOptions` and\n"
           ":func:`f` on the *selected* filters.\n\n* one item\n  goes on\n* two")
    assert plain_text(doc) == ("sst: uses toolbox.sparsity.channels, RunOptions and f on the selected filters."
                               "\n\n* one item goes on\n* two")
    assert first_sentence("A thing (e.g. B). Then more.\nSecond line.") == "A thing (e.g. B)."


def test_plugins_list_says_what_each_plugin_does() -> None:
    output = narrow("plugins", "list")
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in output
    (sst,) = [line for line in lines if line.startswith("│ sst ")]
    assert "Selective sparsity training" in sst and "``" not in output
    for name in available_plugins():
        assert any(line.startswith(f"│ {name} ") for line in lines), name
    assert "toolbox plugins show NAME" in output
