"""``toolbox run --help`` that shows every option: typed core flags and a panel per plugin.

Plugin options and most core options are not typer parameters of ``toolbox run`` (they are read
from the extra ``--name VALUE`` arguments and parsed in one place, :func:`toolbox.options.build_options`),
so typer cannot list them. :class:`RunHelpCommand` adds them to the help page only: it builds
typer options from the :class:`~toolbox.options.PluginOption` declarations of the installed
plugins (those named by ``--plugins`` or the ``--config`` file when given, else all) and from the
core fields of :class:`~toolbox.options.RunOptions`, each with its type, default and choices.
Parsing is untouched.
"""

from __future__ import annotations

import copy
import enum
import inspect
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from toolbox.options import CORE_FIELDS, PRECISIONS, SCHEDULES, SERVES, PluginOption, RunOptions, core_type

_RAW_ARGS = "toolbox.raw_args"
#: Panel of the core options that ``toolbox run`` does not declare as typer parameters.
MORE_CORE_PANEL = "More core options (--name VALUE or config keys)"

#: One line of help for each core option that is not a typer parameter of ``toolbox run``.
CORE_HELP: dict[str, str] = {
    "train": "imagefolder: the training folder (class sub-folders).",
    "test": "imagefolder / --shards: the test folder.",
    "image_size": "imagefolder: images resized/cropped or padded to N x N (default 32).",
    "channels": "imagefolder: 1 (grayscale) or 3 (RGB); default what most training images are.",
    "mean": "Per-channel normalization mean (default: the training images' statistics).",
    "std": "Per-channel normalization std (default: the training images' statistics).",
    "skip_bad_images": "imagefolder: leave out files that cannot be decoded instead of stopping.",
    "allow_overlap": "Warn instead of refusing a folder twice in --shards or test images also in a training folder.",
    "shards": "One folder per step (data that arrives over time); makes the run open-ended.",
    "classes": "Class names every step's folder must have (default: the first folder's).",
    "open_ended": "Every step ends with its sparsify phase, so `toolbox step` can add steps.",
    "serve": "What serve/step{k}.pt holds: learn (the step's model) or compact (pruned).",
    "per_class": "Images per class in every shard (default: the training set split evenly).",
    "val_per_class": "Training images per class held out for validation (0 = none); the promotion gate judges on them.",
    "val": "--shards runs: a folder of validation images (class folders); the promotion gate judges on them.",
    "promote": "When a step's model becomes serve/current.pt, judged on validation images: e.g. top1>=prev-0.5,nfr<=0.03, or always.",
    "eval_batch_size": "Batch size of evaluation passes.",
    "momentum": "SGD momentum.",
    "weight_decay": "SGD weight decay.",
    "schedule": "Learning-rate schedule of every phase.",
    "milestones": "multistep schedule: fractions of the phase where the lr decays (e.g. 0.5,0.75).",
    "lr_decay": "multistep schedule: factor applied at every milestone.",
    "warmup_epochs": "Epochs of linear warm-up from --warmup-lr at the start of every phase.",
    "warmup_lr": "Learning rate the warm-up starts from.",
    "reset_optimizer": "A fresh optimizer for every phase (false: carry the momentum over).",
    "device": "auto, cpu, cuda or cuda:N.",
    "channels_last": "Channels-last memory format (faster convolutions).",
    "precision": "Autocast precision of the forward pass (auto: bf16 where the device has it natively).",
    "threads": "CPU threads for torch (default: torch's choice).",
    "skip_nonfinite": "Skip a batch whose loss is nan/inf instead of stopping the run.",
    "compact_teacher": "Distil from a compacted, BatchNorm-folded copy of the frozen teacher (same logits, fewer MACs).",
}
#: Core options listed only in a config file (mappings), not as flags.
_CONFIG_ONLY = {"model_kwargs", "phase_epochs", "plugin"}
_CORE_CHOICES = {"schedule": SCHEDULES, "precision": PRECISIONS, "serve": SERVES}
_TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN", list: "LIST"}


class RunHelpCommand(TyperCommand):
    """A typer command whose help lists the core and plugin options read from extra arguments."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Remember the raw arguments, so that ``--help`` can see ``--plugins`` and ``--config``."""
        ctx.meta[_RAW_ARGS] = list(args)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Typer's help page of a copy of this command with the extra options added."""
        shown = copy.copy(self)
        declared = {p.name for p in self.params}
        shown.params = ([_typed(p) for p in self.params] + core_params(declared)
                        + plugin_params(requested_plugins(ctx.meta.get(_RAW_ARGS, []))))
        TyperCommand.format_help(shown, ctx, formatter)


def _typed(param: Any) -> Any:
    """A core option declared as text (parsed later) shown with its real type."""
    if param.name not in CORE_FIELDS or getattr(param, "metavar", None):
        return param
    shown = copy.copy(param)
    shown.metavar = _TYPE_NAMES.get(core_type(param.name), "TEXT")
    return shown


def core_params(declared: set[str]) -> list[Any]:
    """Typed options (with defaults) for the core fields not declared as typer parameters."""
    defaults = RunOptions()
    options = []
    for name in CORE_FIELDS:
        if name in declared or name in _CONFIG_ONLY:
            continue
        kind = core_type(name)
        options.append(PluginOption(name, kind, getattr(defaults, name), CORE_HELP.get(name, ""),
                                    choices=_CORE_CHOICES.get(name)))
    return _params(options, MORE_CORE_PANEL)


def requested_plugins(raw_args: list[str]) -> list[str] | None:
    """The plugins named by ``--plugins`` (or the ``--config`` file) in ``raw_args``; ``None``
    when neither names any (then the help shows every installed plugin)."""
    values = _flag_values(raw_args)
    listed = values.get("plugins")
    if listed is None and values.get("config"):
        try:
            from toolbox.options import load_config_file

            listed = load_config_file(values["config"]).get("plugins")
        except Exception:  # noqa: BLE001 - a bad config is reported when the run starts, not in --help
            listed = None
    if listed is None:
        return None
    items = listed if isinstance(listed, list) else str(listed).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _flag_values(raw_args: list[str]) -> dict[str, str]:
    """``--name VALUE`` / ``--name=VALUE`` pairs of ``raw_args`` (only what --help needs)."""
    values: dict[str, str] = {}
    for i, token in enumerate(raw_args):
        name, eq, value = token.partition("=")
        if name in ("--plugins", "--config"):
            if not eq:
                value = raw_args[i + 1] if i + 1 < len(raw_args) else ""
            values[name[2:]] = value
    return values


def plugin_params(names: list[str] | None) -> list[Any]:
    """One panel of typed options per plugin (``names``, or every installed plugin); a plugin that
    fails to load or is unknown gets a panel saying so."""
    from toolbox.plugin_host.entry_points import available_plugins

    installed = available_plugins()
    params: list[Any] = []
    for name in names if names is not None else list(installed):
        panel = f"Plugin {name}"
        if name not in installed:
            params += _notice(panel, f"not installed; installed: {', '.join(installed)}")
            continue
        try:
            options = plugin_options(name)
            params += _params(options, panel) if options else _notice(panel, "no options")
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            params += _notice(panel, f"failed to load or describe its options: {exc}")
    return params


def plugin_options(name: str) -> list[PluginOption]:
    """The options installed plugin ``name`` declares (its ``toolbox_options`` hook)."""
    from toolbox.plugin_host.calls import plugin_options as declared_by
    from toolbox.plugin_host.entry_points import instantiate, load_entry_point

    return declared_by(instantiate(load_entry_point(name)))


def _notice(panel: str, text: str) -> list[Any]:
    """A panel holding one line of text (an option-less row)."""
    note = PluginOption("note", str, None, text)
    (param,) = _params([note], panel)
    param.opts, param.metavar = [""], ""
    return [param]


def _params(options: list[PluginOption], panel: str) -> list[Any]:
    """Typer's own click options for ``options`` (so the help shows INTEGER, FLOAT, choices and
    defaults exactly as for declared flags), all in help panel ``panel``."""
    parameters = []
    for i, opt in enumerate(options):
        kind, default, flag, metavar = _typer_view(opt, f"Choices{i}")
        info = typer.Option(flag, help=opt.help, rich_help_panel=panel, show_default=default is not None,
                            metavar=metavar)
        parameters.append(inspect.Parameter(f"p{i}", inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=Annotated[Optional[kind], info]))

    def function(**kwargs: Any) -> None:
        """Never called: a holder for the parameters."""

    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    holder = typer.Typer(add_completion=False)
    holder.command()(function)
    return list(typer.main.get_command(holder).params)


def _typer_view(opt: PluginOption, enum_name: str) -> tuple[Any, Any, str, str | None]:
    """``(annotation type, default, flag, metavar)`` that make typer show ``opt`` truly: choices as
    an enum, a bool as a ``--x/--no-x`` flag pair, a list as ``A,B,...``, numbers as INTEGER/FLOAT."""
    dashed = opt.name.replace("_", "-")
    if opt.choices is not None:
        kind = enum.Enum(enum_name, {str(c): str(c) for c in opt.choices})
        return kind, None if opt.default is None else kind(str(opt.default)), f"--{dashed}", None
    if opt.type is bool:
        return bool, opt.default, f"--{dashed}/--no-{dashed}", None
    if opt.type is list:
        return str, ",".join(map(str, opt.default)) if opt.default else None, f"--{dashed}", "A,B,..."
    if opt.type in (int, float):
        return opt.type, opt.default, f"--{dashed}", type_name(opt)
    return str, None if opt.default is None else str(opt.default), f"--{dashed}", type_name(opt)


def type_name(opt: PluginOption) -> str:
    """How the help names an option's type: INTEGER, FLOAT, TEXT, BOOLEAN or LIST."""
    return _TYPE_NAMES.get(opt.type, opt.type.__name__.upper())


def show_plugin(name: str, console: Any) -> None:
    """Print installed plugin ``name``: source, docstrings (the plugin's, then its module's), hooks and an options table
    (``toolbox plugins show NAME``); an unknown name is a :class:`UsageError` listing the known ones."""
    from rich.table import Table

    from toolbox.errors import UsageError
    from toolbox.plugin_host.entry_points import available_plugins, instantiate, load_entry_point
    from toolbox.plugin_host.manager import hooks_of

    installed = available_plugins()
    if name not in installed:
        raise UsageError(f"Unknown plugin {name!r}; known plugins: {', '.join(installed) or 'none installed'}.")
    obj = load_entry_point(name)
    plugin = instantiate(obj)
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    say(f"{name} ({installed[name].source}: {installed[name].value})")
    say("")
    docs = [inspect.getdoc(obj), inspect.getdoc(inspect.getmodule(obj)) if inspect.isclass(obj) else None]
    for doc in dict.fromkeys(d for d in docs if d) or ["(no docstring)"]:
        say(doc)
        say("")
    say("hooks: " + (", ".join(h.removeprefix("toolbox_") for h in hooks_of(plugin)) or "none"))
    options = plugin_options(name)
    if not options:
        say("options: none")
        return
    table = Table(title=f"options of {name}")
    for column in ("flag", "type", "default", "choices", "help"):
        table.add_column(column)
    for opt in options:
        default = ",".join(map(str, opt.default)) if isinstance(opt.default, (list, tuple)) else str(opt.default)
        choices = "|".join(map(str, opt.choices)) if opt.choices else ""
        table.add_row("--" + opt.name.replace("_", "-"), type_name(opt), default, choices, opt.help)
    console.print(table)
