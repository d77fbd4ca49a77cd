"""Every call the core makes into the plugins' hooks: the one dispatcher.

The run, the epoch loop and the phase planner call these functions and never ``pm.hook``
themselves (Lightning's ``trainer/call.py`` pattern), so how a hook is called (order, chaining,
which results count) is decided here once. Hooks no plugin implements cost nothing:
:func:`implements` lets the epoch loop skip them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from toolbox.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from toolbox.context import Context
    from toolbox.options import PluginOption, RunOptions

#: Hooks that change the model between phases, chained together (the second is the deprecated alias).
SURGERY_HOOKS = ("toolbox_model_surgery", "toolbox_prune")


def implements(pm: pluggy.PluginManager, hook: str) -> bool:
    """Whether any registered plugin implements ``hook`` (lets the engine skip empty calls)."""
    return bool(getattr(pm.hook, hook).get_hookimpls())


def call_impl(impl: Any, **kwargs: Any) -> Any:
    """Call one pluggy hook implementation with the arguments it asks for."""
    return impl.function(*[kwargs[name] for name in impl.argnames])


def plugin_options(plugin: Any) -> list[PluginOption]:
    """The options one plugin object declares (``toolbox_options``), registered or not."""
    declare = getattr(plugin, "toolbox_options", None)
    return list((declare() if callable(declare) else None) or [])


def declared_options(pm: pluggy.PluginManager) -> dict[str, PluginOption]:
    """All options declared by the registered plugins, by name; conflicting redeclarations fail."""
    merged: dict[str, PluginOption] = {}
    for impl in pm.hook.toolbox_options.get_hookimpls():
        for opt in impl.function() or []:
            previous = merged.get(opt.name)
            if previous is not None and (previous.type, previous.default) != (opt.type, opt.default):
                raise UsageError(
                    f"Plugins disagree on option {opt.name!r} (type or default); "
                    f"plugin {impl.plugin_name!r} must rename it."
                )
            merged.setdefault(opt.name, opt)
    return merged


def configure(pm: pluggy.PluginManager, options: RunOptions) -> None:
    """``toolbox_configure``: every plugin sees the run's options once, before training."""
    pm.hook.toolbox_configure(options=options)


def preflight_ratio(pm: pluggy.PluginManager, default: float = 0.5) -> float:
    """``toolbox_preflight_ratio`` (first answer wins): the fraction of filters the enabled plugins
    will select, for the preflight's dry run; ``default`` when none answers."""
    answer = pm.hook.toolbox_preflight_ratio()
    return default if answer is None else float(answer)


def wanted_phases(pm: pluggy.PluginManager, step: int, num_steps: int) -> list[str]:
    """``toolbox_phases``: every phase name some plugin asks for at ``step`` (duplicates kept)."""
    return [name for extra in pm.hook.toolbox_phases(step=step, num_steps=num_steps) for name in extra or []]


def arrivals(pm: pluggy.PluginManager, labels: Any, num_shards: int, seed: int, per_class: int | None,
             split: str) -> Any | None:
    """``toolbox_arrivals`` (first answer wins): a plugin's step shards, or None for the built-in split."""
    return pm.hook.toolbox_arrivals(labels=labels, num_shards=num_shards, seed=seed, per_class=per_class, split=split)


def data_schedule(pm: pluggy.PluginManager, step: int, phase: str, shards: list[Any]) -> Any | None:
    """``toolbox_data_schedule`` (first answer wins): the data of this phase, or None for the default."""
    return pm.hook.toolbox_data_schedule(step=step, phase=phase, shards=shards)


def phase_start(pm: pluggy.PluginManager, ctx: Context) -> None:
    """``toolbox_phase_start``."""
    pm.hook.toolbox_phase_start(ctx=ctx)


def phase_end(pm: pluggy.PluginManager, ctx: Context) -> None:
    """``toolbox_phase_end``."""
    pm.hook.toolbox_phase_end(ctx=ctx)


def epoch_start(pm: pluggy.PluginManager, ctx: Context) -> None:
    """``toolbox_epoch_start``."""
    pm.hook.toolbox_epoch_start(ctx=ctx)


def epoch_end(pm: pluggy.PluginManager, ctx: Context, metrics: dict[str, float]) -> None:
    """``toolbox_epoch_end``: plugins may add numbers to ``metrics``."""
    pm.hook.toolbox_epoch_end(ctx=ctx, metrics=metrics)


def loss_terms(pm: pluggy.PluginManager, ctx: Context, batch: tuple[torch.Tensor, torch.Tensor],
               logits: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``toolbox_loss``: every plugin's named extra terms, in call order (the engine adds each)."""
    return [item for extra in pm.hook.toolbox_loss(ctx=ctx, batch=batch, logits=logits) if extra
            for item in extra.items()]


def regularize(pm: pluggy.PluginManager, ctx: Context, model: nn.Module) -> None:
    """``toolbox_regularize``: after backward (true gradients), before the optimizer step."""
    pm.hook.toolbox_regularize(ctx=ctx, model=model)


def batch_end(pm: pluggy.PluginManager, ctx: Context, model: nn.Module) -> None:
    """``toolbox_batch_end``: after the optimizer step."""
    pm.hook.toolbox_batch_end(ctx=ctx, model=model)


def model_surgery(pm: pluggy.PluginManager, ctx: Context, model: nn.Module) -> nn.Module:
    """Every ``toolbox_model_surgery`` (and deprecated ``toolbox_prune``) implementation in
    registration (``--plugins``) order, chaining the model."""
    order = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}
    impls = [impl for hook in SURGERY_HOOKS for impl in getattr(pm.hook, hook).get_hookimpls()]
    for impl in sorted(impls, key=lambda impl: order.get(impl.plugin_name, len(order))):
        result = call_impl(impl, ctx=ctx, model=model)
        if result is not None:
            model = result
    return model


def plugin_states(pm: pluggy.PluginManager, ctx: Context) -> dict[str, Any]:
    """``toolbox_state_dict`` of every plugin that implements it and returns something, by plugin name."""
    states: dict[str, Any] = {}
    for impl in pm.hook.toolbox_state_dict.get_hookimpls():
        value = call_impl(impl, ctx=ctx)
        if value is not None:
            states[impl.plugin_name] = value
    return states


def load_plugin_states(pm: pluggy.PluginManager, ctx: Context, states: dict[str, Any]) -> None:
    """Hand each plugin the state it saved (``toolbox_load_state_dict``); plugins without one are skipped."""
    for impl in pm.hook.toolbox_load_state_dict.get_hookimpls():
        if impl.plugin_name in states:
            call_impl(impl, ctx=ctx, state=states[impl.plugin_name])
