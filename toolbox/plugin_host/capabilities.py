"""What plugins say they do, so that neither the core nor a plugin has to name another plugin.

A plugin class (or object) may declare three class attributes, each a set of capability names:

* ``provides``: what it does (:data:`DOES` lists them: ``sparsify``, ``reinit``, ``compact``,
  ``distill_previous``, ``distill_earlier``, ``data_schedule``, ``edit_weights``, ``fresh_model``,
  ``anchor_previous``, ``warm_start``);
* ``conflicts``: capabilities no *other* enabled plugin may provide (two plugins that would both
  distill from the previous model, or both write the masks);
* ``requires``: capabilities some other enabled plugin must provide (``msl`` acts in the
  sparsify phases that a sparsity plugin adds).

``provides_sparsify = True`` (the older spelling) counts as providing ``sparsify``.
:func:`check_combination` refuses a combination that cannot work with one sentence naming the
plugins; the plugin manager runs it when plugins are loaded.
"""

from __future__ import annotations

from typing import Any, Iterable

from toolbox.errors import UsageError
from toolbox.plugin_host.entry_points import load_installed

SPARSIFY = "sparsify"
REINIT = "reinit"
COMPACT = "compact"
DISTILL_PREVIOUS = "distill_previous"
DATA_SCHEDULE = "data_schedule"
DISTILL_EARLIER = "distill_earlier"
EDIT_WEIGHTS = "edit_weights"
FRESH_MODEL = "fresh_model"
ANCHOR_PREVIOUS = "anchor_previous"
WARM_START = "warm_start"
#: Capabilities that need a model whose BN channel groups can be selected and pruned (preflight).
STRUCTURAL = frozenset({SPARSIFY, REINIT, COMPACT})

#: What two providers of a capability would both do (for the refusal sentence).
CLASH = {
    SPARSIFY: "add a sparsify phase and write the masks; enable only one sparsity plugin",
    REINIT: "re-initialize filters between phases; enable one of them",
    COMPACT: "remove filters; enable one of them",
    DISTILL_PREVIOUS: "distill from the previous model, which double-counts distillation; enable one of them",
    DATA_SCHEDULE: "choose the data a step trains on (they are alternative baselines); enable one of them",
}
#: What a provider of a capability does (for the sentence when only one side provides it).
DOES = {
    SPARSIFY: "adds sparsify phases and writes the masks",
    REINIT: "re-initializes filters between phases",
    COMPACT: "removes filters",
    DISTILL_PREVIOUS: "distills from the previous model",
    DISTILL_EARLIER: "distills from earlier steps' models",
    DATA_SCHEDULE: "chooses the data a step trains on",
    EDIT_WEIGHTS: "changes the weights at the start of each step",
    FRESH_MODEL: "starts every step from a fresh model",
    ANCHOR_PREVIOUS: "keeps the weights close to the previous step's",
    WARM_START: "trains each step from the previous step's model",
}
#: What a required capability means (for the refusal sentence).
NEED = {
    SPARSIFY: "sparsify phases, which only a sparsity plugin creates; add sst (or slimming, polarization, "
              "group_lasso) to --plugins",
}


def capabilities_of(plugin: Any) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """``(provides, conflicts, requires)`` of a plugin class or object."""
    provides = set(getattr(plugin, "provides", ()) or ())
    if getattr(plugin, "provides_sparsify", False):
        provides.add(SPARSIFY)
    return (frozenset(provides), frozenset(getattr(plugin, "conflicts", ()) or ()),
            frozenset(getattr(plugin, "requires", ()) or ()))


def providers(names: Iterable[str], capability: str, plugins: dict[str, Any] | None = None) -> list[str]:
    """The names among ``names`` whose plugin provides ``capability`` (``plugins``: name -> object,
    default: the installed ones)."""
    names = list(names)
    plugins = load_installed(names) if plugins is None else plugins
    return [name for name in names if name in plugins and capability in capabilities_of(plugins[name])[0]]


def check_combination(plugins: dict[str, Any]) -> None:
    """Refuse enabled plugins (name -> object) that conflict or miss what they require: one sentence."""
    declared = {name: capabilities_of(obj) for name, obj in plugins.items()}
    for name, (_, conflicts, requires) in declared.items():
        for capability in sorted(conflicts):
            others = [o for o, (p, _, _) in declared.items() if o != name and capability in p]
            if others and capability in declared[name][0]:
                clash = CLASH.get(capability, f"provide {capability}; enable one of them")
                raise UsageError(f"{' and '.join([name, *others])} both {clash}.")
            if others:
                does = DOES.get(capability, f"provides {capability}")
                raise UsageError(f"{name} and {others[0]} cannot run together: {others[0]} {does}; enable one of them.")
        for capability in sorted(requires):
            if not any(capability in p for o, (p, _, _) in declared.items() if o != name):
                need = NEED.get(capability, f"a plugin that provides {capability}; add one to --plugins")
                raise UsageError(f"{name} needs {need}.")

