"""Options: parsing, validation, config files and plugin options."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolbox.errors import UsageError
from toolbox.options import PluginOption, RunOptions, build_options, load_config_file, parse_value


def test_defaults_validate() -> None:
    assert RunOptions().validate().steps == 4


@pytest.mark.parametrize("key,value,fragment", [
    ("steps", "0", "--steps must be at least 1"),
    ("epochs", "-1", "--epochs must be at least 1"),
    ("batch_size", "0", "--batch-size must be at least 1"),
    ("steps", "two", "--steps must be an integer"),
    ("lr", "-0.1", "--lr must be positive"),
    ("schedule", "linear", "--schedule 'linear' is unknown"),
    ("precision", "fp8", "--precision 'fp8' is unknown"),
    ("per_class", "0", "--per-class must be at least 1"),
    ("bogus", "1", "Unknown option 'bogus'"),
])
def test_bad_values_name_the_flag(key: str, value: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        build_options({key: value}, {})


def test_parse_value_types() -> None:
    assert parse_value("yes", bool) is True and parse_value("0", bool) is False
    assert parse_value("a, b,c", list) == ["a", "b", "c"]
    with pytest.raises(ValueError):
        parse_value(1.5, int)


def test_plugin_options_parse_and_check() -> None:
    ratio = PluginOption("ratio", float, 0.5, check=lambda v: None if 0 <= v < 1 else "must lie in [0, 1)")
    options = build_options({"ratio": "0.25"}, {"ratio": ratio})
    assert options.plugin == {"ratio": 0.25}
    assert build_options({}, {"ratio": ratio}).plugin == {"ratio": 0.5}
    with pytest.raises(UsageError, match=r"--ratio=1.5: must lie in \[0, 1\)"):
        build_options({"ratio": "1.5"}, {"ratio": ratio})
    with pytest.raises(UsageError, match="--ratio must be a number"):
        build_options({"ratio": "half"}, {"ratio": ratio})


@pytest.mark.parametrize("kind,raw,sentence", [
    (int, "3.5", "--n must be an integer, got '3.5'."),
    (float, "half", "--n must be a number, got 'half'."),
    (bool, "maybe", "--n must be true or false, got 'maybe'."),
])
def test_type_errors_are_plain_english(kind: type, raw: str, sentence: str) -> None:
    with pytest.raises(UsageError) as info:
        PluginOption("n", kind, kind()).parse(raw)
    assert str(info.value) == sentence
    with pytest.raises(UsageError, match="--reset-optimizer must be true or false"):
        build_options({"reset_optimizer": "maybe"}, {})


def test_config_file_yaml_and_toml(tmp_path: Path) -> None:
    yml = tmp_path / "c.yaml"
    yml.write_text("batch-size: 32\nsteps: 2\nplugins: [finetune]\n")
    assert load_config_file(yml) == {"batch_size": 32, "steps": 2, "plugins": ["finetune"]}
    toml = tmp_path / "c.toml"
    toml.write_text("epochs = 3\n")
    assert build_options(load_config_file(toml), {}).epochs == 3


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Cannot read config file"):
        load_config_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1, 2\n")
    with pytest.raises(UsageError, match="is not valid YAML"):
        load_config_file(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        load_config_file(listing)


def test_phase_epochs_override() -> None:
    options = build_options({"epochs": 2, "phase_epochs": {"sparsify": 5}}, {})
    assert options.epochs_for("learn") == 2 and options.epochs_for("sparsify") == 5
    with pytest.raises(UsageError, match="unknown phase 'warmup'"):
        build_options({"phase_epochs": {"warmup": 1}}, {})


def test_options_of_disabled_plugins_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="toolbox"):
        options = build_options({"ratio": "0.5", "steps": 2}, {}, dormant={"ratio": "sst"})
    assert options.plugin == {} and "belongs to plugin 'sst'" in caplog.text
