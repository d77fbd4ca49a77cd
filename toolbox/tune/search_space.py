"""The search space of ``toolbox tune``: a YAML mapping from run options to ranges or choices.

.. code-block:: yaml

    alpha: {low: 0.1, high: 2.0, log: true}   # a float range, sampled log-uniformly
    lr: {low: 0.01, high: 0.2}                # a float range
    epochs: {low: 2, high: 6}                 # an int range (both bounds whole numbers, or type: int)
    ratio: [0.3, 0.5, 0.7]                    # categorical choices
    teacher: {choices: [eval, batch]}         # the same, spelled out

Any core or plugin option a run accepts can be searched, except those that must stay the same in
every trial (``seed``: trials are compared on the same shards and initialization) and list or
mapping options. Every mistake is one sentence naming the option and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna
import yaml

from toolbox.errors import UsageError
from toolbox.options import normalize_key

FIXED = {"seed": "the seed is the same in every trial so trials compare on the same shards and init",
         "seeds": "a study runs one seed (the config's seed) per trial",
         "out": "every trial's run directory is chosen by tune (STUDY/trials/NNNN)"}
RANGE_KEYS = {"low", "high", "log", "step", "type"}
Choice = str | int | float | bool | None


@dataclass(frozen=True)
class Param:
    """One searched option: a float or int range, or a list of choices."""

    name: str
    kind: str  # "float", "int" or "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Choice, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """The value of this option in ``trial`` (Optuna's sampler chooses it)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        """The values that bound what a trial can get (checked against the option before any trial)."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def load_space(path: Path, option_types: Mapping[str, type]) -> tuple[dict[str, Any], list[Param]]:
    """Read ``path`` and parse it; return the raw mapping (recorded with the study) and the params."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"Cannot read the search space {path}: {exc.strerror or exc}; check the path.") from None
    except (UnicodeDecodeError, yaml.YAMLError):
        raise UsageError(f"The search space {path} is not valid YAML; fix its syntax.") from None
    return raw, parse_space(raw, option_types, str(path))


def parse_space(raw: Any, option_types: Mapping[str, type], source: str = "the search space") -> list[Param]:
    """The params of a search-space mapping; ``option_types`` maps every option the run accepts to
    the type its values parse to."""
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"{source} must map option names to ranges or choices, e.g. "
                         "'alpha: {low: 0.1, high: 2.0}'.")
    return [_parse_param(normalize_key(str(key)), spec, option_types, source) for key, spec in raw.items()]


def _parse_param(name: str, spec: Any, option_types: Mapping[str, type], source: str) -> Param:
    if name in FIXED:
        raise UsageError(f"{source} searches {name!r}, which tune keeps fixed ({FIXED[name]}); remove it.")
    if name not in option_types or name == "plugin":
        known = ", ".join(sorted(n for n in option_types if n not in FIXED and n != "plugin"))
        raise UsageError(f"{source} names unknown option {name!r}; the run's options are: {known} "
                         "(a plugin's options count once the config enables it).")
    kind = option_types[name]
    if kind in (list, dict):
        raise UsageError(f"{source} searches {name!r}, a list or mapping option; tune searches single "
                         "values, so set it in the config.")
    if isinstance(spec, list):
        return _categorical(name, spec, source)
    if isinstance(spec, dict) and set(spec) == {"choices"}:
        return _categorical(name, spec["choices"], source)
    if isinstance(spec, dict):
        return _range(name, spec, kind, source)
    raise UsageError(f"{source} gives {name!r} the single value {spec!r}; give a range like "
                     "'{low: 0.1, high: 2.0}' or a list of choices (a fixed value belongs in the config).")


def _categorical(name: str, choices: Any, source: str) -> Param:
    if not isinstance(choices, list) or not choices:
        raise UsageError(f"{source} gives {name!r} no choices; list at least one value, e.g. '{name}: [0.3, 0.5]'.")
    for choice in choices:
        if choice is not None and not isinstance(choice, (str, int, float, bool)):
            raise UsageError(f"{source} gives {name!r} the choice {choice!r}; choices must be single "
                             "numbers, words or true/false.")
    if len(set(map(repr, choices))) != len(choices):
        raise UsageError(f"{source} lists a choice of {name!r} twice ({choices}); list each once.")
    return Param(name, "categorical", choices=tuple(choices))


def _range(name: str, spec: dict[str, Any], kind: type, source: str) -> Param:
    unknown = sorted(set(spec) - RANGE_KEYS)
    if unknown:
        raise UsageError(f"{source} gives {name!r} unknown key(s) {', '.join(unknown)}; a range takes "
                         "low, high, log, step and type (or use choices alone).")
    low, high = spec.get("low"), spec.get("high")
    if not _is_number(low) or not _is_number(high):
        raise UsageError(f"{source} gives {name!r} a range without numeric low and high "
                         f"(low={low!r}, high={high!r}); write e.g. '{{low: 0.1, high: 2.0}}'.")
    if not low < high:
        raise UsageError(f"{source} gives {name!r} low={low} >= high={high}; a range needs low < high.")
    if kind not in (int, float):
        raise UsageError(f"{source} gives {name!r} a numeric range but it takes {kind.__name__} values; "
                         f"list its choices instead, e.g. '{name}: [a, b]'.")
    number = spec.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    if number not in ("int", "float"):
        raise UsageError(f"{source} gives {name!r} type {number!r}; use int or float.")
    if number == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise UsageError(f"{source} makes {name!r} an int range with fractional bounds {low} and {high}; "
                         "use whole numbers or type: float.")
    if kind is int and number == "float":
        raise UsageError(f"{source} gives {name!r} a float range but it takes whole numbers; use integer "
                         "low and high.")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise UsageError(f"{source} gives {name!r} log={log!r}; write log: true or log: false.")
    if log and low <= 0:
        raise UsageError(f"{source} gives {name!r} a log range from {low}; a log range needs low > 0.")
    if step is not None and (not _is_number(step) or step <= 0):
        raise UsageError(f"{source} gives {name!r} step={step!r}; a step must be a positive number.")
    if step is not None and number == "int" and not float(step).is_integer():
        raise UsageError(f"{source} gives {name!r} an int range with step {step}; use a whole-number step.")
    if step is not None and log and not (number == "int" and step == 1):
        raise UsageError(f"{source} gives {name!r} both log and step; Optuna samples one or the other, "
                         "so drop one.")
    if number == "int":
        return Param(name, "int", int(low), int(high), log, None if step is None else int(step))
    return Param(name, "float", float(low), float(high), log, None if step is None else float(step))


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def declared_space(plugins: list[Any]) -> dict[str, Any]:
    """The search space a method's plugins declare (class attribute ``search_space``: option ->
    range or choices, as in a space file), merged in ``--plugins`` order (a later one wins)."""
    space: dict[str, Any] = {}
    for plugin in plugins:
        space.update(getattr(plugin, "search_space", None) or {})
    return space
