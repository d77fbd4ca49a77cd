"""One typed options object for a run, filled from a config file and CLI flags.

Core options are fields of :class:`RunOptions`; plugin options are declared by plugins
(:class:`PluginOption`) and live in ``RunOptions.plugin``. A YAML/TOML config file uses the same
keys as the flags (dashes or underscores); flags override the file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable

import yaml

from toolbox.errors import UsageError
from toolbox.plugin_host.phases import installed_phases

SCHEDULES = ("cosine", "multistep", "constant")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: Which model ``RUN_DIR/serve/step{k}.pt`` holds: the learn phase's, or the compacted sparse one.
SERVES = ("learn", "compact")
MAX_SEED = 2**32 - 1  # every seed a phase derives from it still fits torch's 64-bit generators


@dataclass
class PluginOption:
    """An option a plugin adds to ``toolbox run`` (flag ``--name``, config key ``name``).

    ``check`` returns an error sentence for an invalid value, or ``None``.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None

    def parse(self, raw: Any) -> Any:
        """Convert ``raw`` (a string from the CLI or a YAML value) and validate it."""
        flag = "--" + self.name.replace("_", "-")
        try:
            value = parse_value(raw, self.type)
        except (TypeError, ValueError):
            raise UsageError(f"{flag} must be {expected(self.type)}, got {raw!r}.") from None
        check_finite(flag, value, raw)
        if self.choices is not None and value not in self.choices:
            raise UsageError(
                f"{flag} must be one of {', '.join(map(str, self.choices))}, got {raw!r}."
            )
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise UsageError(f"{flag}={value!r}: {problem}")
        return value


def expected(kind: type) -> str:
    """What a value of ``kind`` must be, for error sentences: "an integer", "a number", ..."""
    return {int: "an integer", float: "a number", bool: "true or false", list: "a comma-separated list",
            str: "text"}.get(kind, f"a {kind.__name__}")


def check_finite(flag: str, value: Any, raw: Any) -> None:
    """Refuse ``nan`` and ``inf`` for a float option with one sentence (no option wants them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {raw!r}.")


def parse_value(raw: Any, kind: type) -> Any:
    """Parse ``raw`` as ``kind`` (bool accepts true/false/yes/no/1/0; lists are comma-separated)."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind is list:
        if isinstance(raw, (list, tuple)):
            return list(raw)
        return [item.strip() for item in str(raw).split(",") if item.strip()]
    if kind is int and isinstance(raw, float) and not raw.is_integer():
        raise ValueError(raw)
    if kind is int and isinstance(raw, bool):
        raise ValueError(raw)
    if kind is float and isinstance(raw, bool):
        raise ValueError(raw)
    return kind(raw)


@dataclass
class RunOptions:
    """Every core setting of a run. Plugin options are in ``plugin``."""

    plugins: list[str] = field(default_factory=list)
    arch: str = "cifar_resnet20"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "synthetic"
    data_root: str | None = None
    train: str | None = None
    test: str | None = None
    image_size: int | None = None
    channels: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    skip_bad_images: bool = False
    allow_overlap: bool = False
    shards: list[str] = field(default_factory=list)
    classes: list[str] | None = None
    open_ended: bool = False
    serve: str = "learn"
    promote: str = "top1>=prev-0.5"  # the promotion gate's rule (toolbox.run.promotion)
    val: str | None = None  # a folder of validation images for --shards runs (the gate judges on it)
    steps: int = 4
    per_class: int | None = None
    val_per_class: int = 0
    epochs: int = 1
    phase_epochs: dict[str, int] = field(default_factory=dict)
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    lr_decay: float = 0.1
    warmup_epochs: int = 0
    warmup_lr: float = 0.01
    reset_optimizer: bool = True
    seed: int = 0
    seeds: list[int] = field(default_factory=list)
    out: str | None = None
    device: str = "auto"
    channels_last: bool = True
    precision: str = "fp32"  # "auto": bf16 where native (toolbox.runtime.device), fp32 elsewhere
    compact_teacher: bool = True
    threads: int | None = None
    skip_nonfinite: bool = False
    tensorboard: bool = True
    plugin: dict[str, Any] = field(default_factory=dict)

    def epochs_for(self, phase: str) -> int:
        """Epochs of ``phase`` (``phase_epochs`` overrides ``epochs``)."""
        return int(self.phase_epochs.get(phase, self.epochs))

    def validate(self, phases: Iterable[str] | None = None) -> "RunOptions":
        """Raise :class:`UsageError` naming the first bad core value; return self.

        ``phases`` are the names ``phase_epochs`` may use (default: those of the installed plugins).
        """
        positive = {"steps": self.steps, "epochs": self.epochs, "batch-size": self.batch_size,
                    "eval-batch-size": self.eval_batch_size}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name} must be at least 1, got {value}.")
        if self.per_class is not None and self.per_class < 1:
            raise UsageError(f"--per-class must be at least 1, got {self.per_class}.")
        if self.val_per_class < 0:
            raise UsageError(f"--val-per-class must be >= 0, got {self.val_per_class}.")
        if self.phase_epochs:
            known = list(installed_phases() if phases is None else phases)
            self.phase_epochs = {phase: _phase_epochs(phase, value, known) for phase, value in self.phase_epochs.items()}
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}.")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UsageError("--weight-decay must be >= 0 and --momentum in [0, 1).")
        if not self.lr_decay > 0:
            raise UsageError(f"--lr-decay must be positive (0.1 divides the lr by 10), got {self.lr_decay}.")
        if self.warmup_lr < 0:
            raise UsageError(f"--warmup-lr must be >= 0, got {self.warmup_lr}.")
        if any(not 0 <= m <= 1 for m in self.milestones):
            raise UsageError(f"--milestones are fractions of the phase in [0, 1] like 0.5,0.75, got {self.milestones}.")
        for flag, seeds in (("--seed", [self.seed]), ("--seeds", self.seeds)):
            if any(not 0 <= s <= MAX_SEED for s in seeds):
                raise UsageError(f"Seeds must be >= 0 and at most {MAX_SEED}; {flag} got {','.join(map(str, seeds))}.")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule {self.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}.")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}.")
        if self.warmup_epochs < 0:
            raise UsageError(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}.")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}.")
        if self.serve not in SERVES:
            raise UsageError(f"--serve {self.serve!r} is unknown; use one of {', '.join(SERVES)}.")
        if self.classes and not self.shards:
            raise UsageError("--classes is recorded by --shards runs (the first folder's classes); drop it.")
        if self.val and not self.shards:
            raise UsageError("--val DIR is for --shards runs; other runs hold out --val-per-class N images instead.")
        if self.shards:
            self.steps, self.open_ended, self.dataset = len(self.shards), True, "imagefolder"
        self._validate_images()
        return self

    def _validate_images(self) -> None:
        """The image-folder options (``--dataset imagefolder`` only) and ``--mean/--std``."""
        if self.image_size is not None and self.image_size < 1:
            raise UsageError(f"--image-size must be at least 1, got {self.image_size}.")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"--channels must be 1 (grayscale) or 3 (RGB), got {self.channels}.")
        if self.std and any(not v > 0 for v in self.std):
            raise UsageError(f"--std values must be positive, got {self.std}.")
        folder_only = {"train": self.train, "test": self.test, "image-size": self.image_size,
                       "channels": self.channels, "skip-bad-images": self.skip_bad_images or None}
        used = [flag for flag, value in folder_only.items() if value is not None]
        if used and self.dataset != "imagefolder":
            raise UsageError(f"--{used[0]} applies to --dataset imagefolder only (this run uses {self.dataset}); "
                             "add --dataset imagefolder or drop it.")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, as written to ``config.yaml`` and checkpoints."""
        return dataclasses.asdict(self)


CORE_FIELDS = {f.name: f for f in dataclasses.fields(RunOptions)}



def _phase_epochs(phase: Any, value: Any, known: list[str]) -> int:
    """One ``phase_epochs`` entry: a known phase and a whole number >= 0."""
    if phase not in known:
        raise UsageError(f"phase_epochs names unknown phase {phase!r}; use one of {', '.join(known)}.")
    try:
        epochs = parse_value(value, int)
    except (TypeError, ValueError):
        raise UsageError(f"phase_epochs.{phase} must be a whole number of epochs, got {value!r}.") from None
    if epochs < 0:
        raise UsageError(f"phase_epochs.{phase} must be >= 0, got {value}.")
    return epochs


def _field_type(name: str) -> type:
    """The Python type used to parse a core option given as text."""
    annotation = str(CORE_FIELDS[name].type)
    for kind in (bool, int, float, str):
        if annotation.startswith(kind.__name__):
            return kind
    if annotation.startswith("list"):
        return list
    if annotation.startswith("dict"):
        return dict
    return str


#: The type a core option's text parses to (public name, e.g. for ``toolbox run --help``).
core_type = _field_type


def option_types(plugin_options: dict[str, PluginOption]) -> dict[str, type]:
    """Every option a run accepts (core fields and the plugins' declared options) with the type its
    values parse to."""
    types = {name: _field_type(name) for name in CORE_FIELDS if name != "plugin"}
    types.update({name: opt.type for name, opt in plugin_options.items()})
    return types


def normalize_key(key: str) -> str:
    """``--batch-size`` / ``batch-size`` / ``batch_size`` -> ``batch_size``."""
    return key.lstrip("-").replace("-", "_")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML config into a dict with normalized keys."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"Cannot read config file {path}: {exc.strerror or exc}; check the path.") from None
    except UnicodeDecodeError:
        raise UsageError(f"Config file {path} is not UTF-8 text; pass a YAML or TOML file.") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        raise UsageError(f"Config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'} ({first}); fix its syntax.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"Config file {path} must hold a mapping of option names to values.")
    return {normalize_key(str(k)): v for k, v in data.items()}


def build_options(values: dict[str, Any], plugin_options: dict[str, PluginOption],
                  dormant: dict[str, str] | None = None) -> RunOptions:
    """Make validated :class:`RunOptions` from merged config/flag ``values``.

    ``plugin_options`` are the options declared by the enabled plugins; ``dormant`` maps options
    of installed but disabled plugins to their plugin (ignored with a warning, so one config
    serves several methods); any other unknown key is an error naming it.
    """
    core: dict[str, Any] = {}
    plugin: dict[str, Any] = {name: opt.default for name, opt in plugin_options.items()}
    nested_plugin = values.pop("plugin", None) or {}
    if not isinstance(nested_plugin, dict):
        raise UsageError("The config key 'plugin' must map plugin option names to values.")
    for key, raw in list(values.items()) + [(normalize_key(k), v) for k, v in nested_plugin.items()]:
        key = normalize_key(key)
        if raw is None and key in CORE_FIELDS:
            continue
        if key in CORE_FIELDS and key != "plugin":
            core[key] = _parse_core(key, raw)
        elif key in plugin_options:
            plugin[key] = plugin_options[key].parse(raw)
        elif dormant and key in dormant:
            logging.getLogger("toolbox").warning(
                "Ignoring option %r: it belongs to plugin %r, which is not enabled.", key, dormant[key])
        else:
            known = sorted(set(CORE_FIELDS) - {"plugin"} | set(plugin_options))
            raise UsageError(
                f"Unknown option {key!r}; known options are: {', '.join(known)} "
                "(plugin options appear when their plugin is enabled with --plugins)."
            )
    options = RunOptions(**core, plugin=plugin)
    return options.validate()


def _parse_core(key: str, raw: Any) -> Any:
    """Parse one core option value, with a one-sentence error."""
    kind = _field_type(key)
    flag = "--" + key.replace("_", "-")
    if kind is dict:
        if not isinstance(raw, dict):
            raise UsageError(f"{key} must be a mapping in the config file, got {raw!r}.")
        return dict(raw)
    try:
        value = parse_value(raw, kind)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} must be {expected(kind)}, got {raw!r}.") from None
    check_finite(flag, value, raw)
    if key == "milestones":
        try:
            value = [float(v) for v in value]
        except ValueError:
            raise UsageError(f"--milestones must be fractions like 0.5,0.75, got {raw!r}.") from None
        if not all(math.isfinite(v) for v in value):
            raise UsageError(f"--milestones must be finite fractions like 0.5,0.75, got {raw!r}.")
    if key in ("mean", "std"):
        try:
            value = [float(v) for v in value]
        except ValueError:
            raise UsageError(f"{flag} must be one number per channel like 0.5 or 0.49,0.48,0.45, got {raw!r}.") from None
        if not value or not all(math.isfinite(v) for v in value):
            raise UsageError(f"{flag} must be finite numbers, one per channel, got {raw!r}.")
    if key == "plugins":
        value = [str(v) for v in value]
    if key == "seeds":
        try:
            value = [int(v) for v in value]
        except ValueError:
            raise UsageError(f"--seeds must be integers like 0,1,2, got {raw!r}.") from None
        if len(set(value)) != len(value):
            raise UsageError(f"--seeds lists a seed twice ({raw!r}); list each seed once.")
    return value


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML mapping the toolbox wrote (config.yaml, experiment.yaml); damage is one sentence."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise UsageError(f"{path} is not readable YAML; the run directory is damaged (restore the file "
                         "or start a new run).") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path} does not hold a mapping of options; the run directory is damaged "
                         "(restore the file or start a new run).")
    return values


def plugin_names(values: dict[str, Any]) -> list[str]:
    """The ``plugins`` value as a list of names (a comma-separated string, a list, or one value)."""
    names = values.get("plugins") or []
    if isinstance(names, str):
        return [p.strip() for p in names.split(",") if p.strip()]
    if isinstance(names, (list, tuple)):
        return [str(name) for name in names]
    return [str(names)]


def option_values(declared: Iterable[PluginOption], values: dict[str, Any]) -> dict[str, Any]:
    """Every declared option's value in ``values``, parsed and checked by its :class:`PluginOption`
    (the one place options are validated); a missing one takes its default."""
    return {opt.name: opt.parse(values[opt.name]) if opt.name in values else opt.default for opt in declared}


class PluginSettings:
    """Mixin for plugins whose options are read once into ``self.cfg``.

    ``toolbox_configure`` calls :meth:`configure_settings`; a hook that runs without it (a plugin
    driven directly, as in tests) reads them on first use through :meth:`settings`. Subclasses
    implement :meth:`read_settings`.
    """

    cfg: Any = None

    def read_settings(self, values: dict[str, Any]) -> Any:
        """The plugin's settings from the run's plugin option values. By default every option the
        plugin declares (``toolbox_options``), parsed and checked, as an attribute of its name
        (``cfg.ewc_lambda``); override to build a dataclass of your own."""
        return SimpleNamespace(**option_values(self.toolbox_options(), values))  # type: ignore[attr-defined]

    def configure_settings(self, values: dict[str, Any]) -> Any:
        """Read (and so validate) the settings now; return them."""
        self.cfg = self.read_settings(values)
        return self.cfg

    def settings(self, ctx: Any) -> Any:
        """The settings, read from ``ctx.options`` when :meth:`configure_settings` has not run."""
        if self.cfg is None:
            self.cfg = self.read_settings(ctx.options.plugin)
        return self.cfg
