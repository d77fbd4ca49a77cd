"""``toolbox run --help`` at 80 columns: the typed core flags, the other core options in a few
short panels, and the options of the plugins named by ``--plugins`` (or a pointer to them).

Plugin options and most core options are not typer parameters of ``toolbox run`` (they are read
from the extra ``--name VALUE`` arguments and parsed in one place, :func:`toolbox.options.build_options`),
so typer cannot list them. :class:`RunHelpCommand` adds them to the help page only, each with its
type, default and choices, in the type vocabulary typer uses for declared flags (``<int>``,
``<float>``, ``<str>``, ``<bool>``). Parsing is untouched.
"""

from __future__ import annotations

import copy
from typing import Any

from typer.core import TyperCommand

from toolbox.options import CORE_FIELDS, PRECISIONS, SCHEDULES, SERVES, PluginOption, RunOptions, core_type

_RAW_ARGS = "toolbox.raw_args"

#: Panels of the core options that ``toolbox run`` does not declare as typer parameters, with one
#: line of help each. A core field missing here is listed in :data:`OTHER_PANEL`.
CORE_PANELS: dict[str, dict[str, str]] = {
    "Your own images (--name VALUE or config keys)": {
        "train": "imagefolder: the training folder (class sub-folders).",
        "test": "imagefolder / --shards: the test folder.",
        "image_size": "Images resized/cropped or padded to N x N (default 32).",
        "channels": "1 (grayscale) or 3 (RGB); default what most training images are.",
        "mean": "Per-channel normalization mean (default: the training images').",
        "std": "Per-channel normalization std (default: the training images').",
        "skip_bad_images": "Leave out files that cannot be decoded instead of stopping.",
        "allow_overlap": "Warn instead of refusing images seen twice (shards, test).",
        "shards": "One folder per step (data that arrives over time); open-ended.",
        "classes": "Class names every step's folder must have (default: the first's).",
        "open_ended": "Every step ends with its sparsify phase, so `toolbox step` works.",
        "serve": "What serve/step{k}.pt holds: the step's model or the pruned one.",
        "per_class": "Images per class in every shard (default: an even split).",
        "split": "Arrivals: stratified (same class mix) or dirichlet:ALPHA (seeded).",
        "val_per_class": "Training images per class held out for validation (0: none).",
        "val": "--shards: a folder of validation images the promotion gate judges on.",
        "promote": "When a step's model is served (current.pt): e.g. top1>=prev-0.5 or always.",
    },
    "Training (--name VALUE or config keys)": {
        "eval_batch_size": "Batch size of evaluation passes.",
        "momentum": "SGD momentum.",
        "weight_decay": "SGD weight decay.",
        "schedule": "Learning-rate schedule of every phase.",
        "milestones": "multistep: fractions of the phase where the lr decays.",
        "lr_decay": "multistep: factor applied at every milestone.",
        "warmup_epochs": "Epochs of linear warm-up at the start of every phase.",
        "warmup_lr": "Learning rate the warm-up starts from.",
        "reset_optimizer": "Keep the momentum from one phase to the next.",
        "skip_nonfinite": "Skip a batch whose loss is nan/inf instead of stopping.",
        "compact_teacher": "Distil from the frozen teacher as is, not a compacted copy.",
        "models_from": "Python files or modules to import first: your own --arch.",
    },
    "Machine (--name VALUE or config keys)": {
        "device": "auto, cpu, cuda or cuda:N.",
        "channels_last": "Standard memory format instead of channels-last.",
        "precision": "Autocast precision (auto: bf16 where the device has it).",
        "threads": "CPU threads for torch (default: torch's choice).",
        "tensorboard": "Write no TensorBoard event files.",
    },
}
OTHER_PANEL = "Other core options (--name VALUE or config keys)"
#: The help line of every core option that is not a typer parameter of ``toolbox run``.
CORE_HELP: dict[str, str] = {name: text for panel in CORE_PANELS.values() for name, text in panel.items()}
#: Core options listed only in a config file (mappings), not as flags.
_CONFIG_ONLY = {"model_kwargs", "phase_epochs", "plugin"}
_CORE_CHOICES = {"schedule": SCHEDULES, "precision": PRECISIONS, "serve": SERVES}
#: typer's own names for the types of declared flags, used for every option shown.
_TYPE_NAMES = {int: "<int>", float: "<float>", str: "<str>", bool: "<bool>", list: "<a,b,...>"}
#: Choices longer than this go into the help text instead of the type column.
_CHOICES_WIDTH = 16


class RunHelpCommand(TyperCommand):
    """A typer command whose help lists the core and plugin options read from extra arguments."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Remember the raw arguments, so that ``--help`` can see ``--plugins`` and ``--config``."""
        ctx.meta[_RAW_ARGS] = list(args)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Typer's help page of the declared flags, then the panels of the extra options."""
        shown = copy.copy(self)
        shown.params = [_typed(p) for p in self.params]
        TyperCommand.format_help(shown, ctx, formatter)
        console = _console()
        declared = {p.name for p in self.params}
        for title, options in core_panels(declared):
            console.print(options_panel(title, options))
        names = requested_plugins(ctx.meta.get(_RAW_ARGS, []))
        for title, body in plugin_panels(names):
            console.print(body if not isinstance(body, str) else note_panel(title, body))


def _console() -> Any:
    """The console typer prints its help with (same width and colours)."""
    try:
        from typer.rich_utils import _get_rich_console

        return _get_rich_console()
    except ImportError:  # pragma: no cover - another typer version
        from rich.console import Console

        return Console()


def _typed(param: Any) -> Any:
    """A core option declared as text (parsed later) shown with its real type and default."""
    if param.name not in CORE_FIELDS or getattr(param, "metavar", None) or param.name in ("config", "resume"):
        return param
    shown = copy.copy(param)
    shown.metavar = _TYPE_NAMES.get(core_type(param.name), "<str>")
    return shown


def core_params(declared: set[str]) -> list[PluginOption]:
    """The core fields not declared as typer parameters, as typed options with their defaults."""
    defaults = RunOptions()
    return [PluginOption(name, core_type(name), getattr(defaults, name), CORE_HELP.get(name, ""),
                         choices=_CORE_CHOICES.get(name))
            for name in CORE_FIELDS if name not in declared and name not in _CONFIG_ONLY]


def core_panels(declared: set[str]) -> list[tuple[str, list[PluginOption]]]:
    """``(title, options)`` of the core panels, in :data:`CORE_PANELS` order, then the rest."""
    options = {opt.name: opt for opt in core_params(declared)}
    panels = [(title, [options.pop(name) for name in names if name in options])
              for title, names in CORE_PANELS.items()]
    panels.append((OTHER_PANEL, list(options.values())))
    return [(title, opts) for title, opts in panels if opts]


def requested_plugins(raw_args: list[str]) -> list[str] | None:
    """The plugins named by ``--plugins`` (or the ``--config`` file) in ``raw_args``; ``None``
    when neither names any (then the help points at them instead of listing their options)."""
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


def plugin_panels(names: list[str] | None) -> list[tuple[str, Any]]:
    """``(title, panel or one line of text)`` for each plugin in ``names``; for ``None`` one
    pointer naming the installed plugins. A plugin that fails to load or is unknown says so."""
    from toolbox.plugin_host.entry_points import available_plugins

    installed = available_plugins()
    if names is None:
        return [("Plugin options", f"Shown for the plugins named: toolbox run --plugins sst,aod --help. "
                                   f"Installed: {', '.join(installed) or 'none'}. "
                                   "toolbox plugins show NAME describes one.")]
    panels: list[tuple[str, Any]] = []
    for name in names:
        title = f"Plugin {name} (--name VALUE or config keys)"
        if name not in installed:
            panels.append((title, f"not installed; installed: {', '.join(installed)}"))
            continue
        try:
            options = plugin_options(name)
            panels.append((title, options_panel(title, options) if options else "no options"))
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            panels.append((title, f"failed to load or describe its options: {exc}"))
    return panels


def plugin_options(name: str) -> list[PluginOption]:
    """The options installed plugin ``name`` declares (its ``toolbox_options`` hook)."""
    from toolbox.plugin_host.calls import plugin_options as declared_by
    from toolbox.plugin_host.entry_points import instantiate, load_entry_point

    return declared_by(instantiate(load_entry_point(name)))


def option_row(opt: PluginOption) -> tuple[str, str, str]:
    """``(flag, type, help)`` of one option as the help shows it: a bool as the flag that changes
    its default, choices as ``<a|b>`` (or in the help when long), the default at the end."""
    dashed = opt.name.replace("_", "-")
    text = (opt.help or "").strip()
    if opt.type is bool:
        return (f"--no-{dashed}" if opt.default else f"--{dashed}"), "", text
    kind = type_name(opt)
    if opt.choices is not None:
        listed = "|".join(map(str, opt.choices))
        if len(listed) + 2 <= _CHOICES_WIDTH:
            kind = f"<{listed}>"
        else:
            text = f"{text.rstrip('.')}: {', '.join(map(str, opt.choices))}."
    if opt.default not in (None, [], ()):
        default = ",".join(map(str, opt.default)) if isinstance(opt.default, (list, tuple)) else str(opt.default)
        text = f"{text} [default: {default}]"
    return f"--{dashed}", kind, text


def options_panel(title: str, options: list[PluginOption]) -> Any:
    """A help panel of ``options``: flag and type unwrapped, the help in the rest of the width."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None, expand=True, padding=(0, 1), pad_edge=False)
    table.add_column(no_wrap=True, style="bold cyan")
    table.add_column(no_wrap=True, style="bold yellow")
    table.add_column(ratio=1, overflow="fold")
    for opt in options:
        table.add_row(*(Text(cell) for cell in option_row(opt)))
    return Panel(table, title=title, title_align="left", border_style="dim")


def note_panel(title: str, text: str) -> Any:
    """A help panel holding one paragraph of text."""
    from rich.panel import Panel
    from rich.text import Text

    return Panel(Text(text), title=title, title_align="left", border_style="dim", highlight=False)


def type_name(opt: PluginOption) -> str:
    """How the help names an option's type: ``<int>``, ``<float>``, ``<str>``, ``<bool>`` or a list."""
    return _TYPE_NAMES.get(opt.type, f"<{opt.type.__name__}>")

