"""Hook specifications: the contract between the engine and every plugin.

Each hook below is an empty function whose docstring is its contract. A plugin is any
module or object with functions decorated by :data:`hookimpl` whose names match these
specs; it may accept any subset of the listed arguments (pluggy passes them by name).

Order of calls in a run (see ``toolbox.run.run``)::

    toolbox_options()                      once, when the plugin is loaded
    toolbox_arrivals(labels, num_shards, seed, per_class, split)  once: the step shards (first answer)
    toolbox_configure(options)             once, before training
    toolbox_preflight_ratio()              once, for the preflight's dry run (first answer)
    for step in 1..N:
        toolbox_phases(step, num_steps)    which phases this step runs
        for phase in phases:
            toolbox_data_schedule(step, phase, shards)
            toolbox_phase_start(ctx)       (ctx.teacher = model as the previous phase left it)
            toolbox_model_surgery(ctx, model)  chained: each plugin gets the previous one's model
            for epoch:
                toolbox_epoch_start(ctx)
                for batch:
                    toolbox_loss(ctx, batch, logits)      extra loss terms
                    backward (and GradScaler.unscale_ when one is used)
                    toolbox_regularize(ctx, model)        sees true (unscaled) gradients
                    optimizer.step()
                    toolbox_batch_end(ctx, model)         after the parameter update
                toolbox_epoch_end(ctx, metrics)
                toolbox_state_dict(ctx)    after every epoch but the last: saved in partial.pt
            toolbox_phase_end(ctx)         before the phase's checkpoint is written

A phase continued from ``partial.pt`` after a kill (``toolbox run --resume``) calls
``toolbox_phase_start(ctx)`` (same teacher, ``ctx.start_epoch`` > 0), skips ``toolbox_model_surgery`` (the
saved model is already pruned), restores model, masks, records, optimizer and the torch RNG, calls
``toolbox_load_state_dict(ctx, state)``, then trains epochs ``ctx.start_epoch ..`` as above.

The core calls these only through :mod:`toolbox.plugin_host.calls`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from toolbox.context import Context
    from toolbox.options import PluginOption, RunOptions

PROJECT = "toolbox"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def toolbox_options() -> list[PluginOption]:
    """Declare the plugin's command-line / config options.

    Return a list of :class:`toolbox.options.PluginOption`. Each becomes a ``--name VALUE``
    flag of ``toolbox run`` and a key of the YAML config; values are parsed, validated and
    stored in ``options.plugin[name]`` before :func:`toolbox_configure` is called. Two plugins
    may declare the same option name only with the same type and default (they share it).
    """


@hookspec
def toolbox_configure(options: RunOptions) -> None:
    """Receive the validated run options once, before any training.

    ``options`` is the run's :class:`toolbox.options.RunOptions`. Store what you need on the
    plugin object. Raise :class:`toolbox.errors.UsageError` with one sentence for a value or a
    plugin combination that cannot work (it is reported with exit code 2 before training).
    Combinations declared through capabilities (``provides``/``conflicts``/``requires``) are
    already checked when the plugins load.
    """


@hookspec(firstresult=True)
def toolbox_preflight_ratio() -> float | None:
    """The fraction of filters this plugin will select or remove, for the preflight's dry run
    (called after :func:`toolbox_configure`); ``None`` when it selects none. First answer wins;
    with no answer the dry run uses 0.5.
    """


@hookspec
def toolbox_phases(step: int, num_steps: int) -> list[str] | None:
    """Name the extra phases step ``step`` (1-based, of ``num_steps``) must run.

    The engine always runs ``learn``; the union of all returned names is run in the order of
    the places the plugins declare (``phases = {"sparsify": 1}``; see
    :mod:`toolbox.plugin_host.phases`). Return ``None`` or ``[]`` to add nothing.
    """


@hookspec(firstresult=True)
def toolbox_arrivals(labels: torch.Tensor, num_shards: int, seed: int, per_class: int | None,
                     split: str) -> list[torch.Tensor] | None:
    """Cut the training set into the ``num_shards`` shards that arrive one per step (the arrival process).

    ``labels`` are the labels of the training images left after the validation split; ``split``
    is ``--split`` as given (``NAME[:ARGS]``). Return one 1-D int64 tensor of indices into
    ``labels`` per step, or ``None`` to leave it to the built-in processes (``stratified``,
    ``dirichlet:ALPHA``). The first non-``None`` answer wins. Not called in ``--shards`` runs.
    """


@hookspec(firstresult=True)
def toolbox_data_schedule(step: int, phase: str, shards: list[torch.Tensor]) -> torch.Tensor | None:
    """Choose the training indices for ``phase`` of ``step``.

    ``shards`` is the list of index tensors (0-based list; ``shards[step - 1]`` is the new
    shard). Return a 1-D int64 tensor of indices into the training set, or ``None`` to leave the
    default (the new shard only). The first non-``None`` answer wins. In a ``--shards`` run the
    training set is the step folders still present, one after the other (a gone folder's shard
    is empty).
    """


@hookspec
def toolbox_phase_start(ctx: Context) -> None:
    """A phase is about to train.

    ``ctx`` (:class:`toolbox.context.Context`) holds step, phase, the model, ``ctx.teacher``
    (a frozen copy of the model as the previous phase left it, ``None`` in the very first
    phase), ``ctx.masks`` (unimportant-filter masks), options and the run's records.
    """


@hookspec
def toolbox_model_surgery(ctx: Context, model: nn.Module) -> nn.Module | None:
    """Change the model between phases; return the new model or ``None`` to keep it.

    Called after :func:`toolbox_phase_start` and before the optimizer is built, so a plugin
    may re-initialize filters in place (AOD) or return a structurally smaller model
    (compaction). Calls are chained in ``--plugins`` order: each implementation receives the
    model returned by the previous one. ``ctx.create_model()`` gives a fresh model of the run's
    architecture; a plugin that rescales or redraws weights must re-estimate or reset the
    BatchNorm running statistics (``toolbox.methods.bn_statistics``), else evaluation can sit at chance.
    """


@hookspec(warn_on_impl=DeprecationWarning("toolbox_prune is deprecated: rename the hook implementation to "
                                          "toolbox_model_surgery (same arguments); the alias goes in the next release."))
def toolbox_prune(ctx: Context, model: nn.Module) -> nn.Module | None:
    """Deprecated alias of :func:`toolbox_model_surgery` (chained with it, in ``--plugins`` order)."""


@hookspec
def toolbox_epoch_start(ctx: Context) -> None:
    """An epoch is about to start (``ctx.epoch`` is 0-based)."""


@hookspec
def toolbox_loss(ctx: Context, batch: tuple[torch.Tensor, torch.Tensor],
                 logits: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Return extra loss terms for this batch as ``{name: scalar tensor}``, or ``None``.

    ``batch`` is ``(inputs, targets)`` on the device; ``logits`` the student's output. The
    engine adds every returned term to the cross-entropy and logs each one by name (mean per
    epoch in ``metrics.jsonl``). Names must be unique across plugins.
    """


@hookspec
def toolbox_regularize(ctx: Context, model: nn.Module) -> None:
    """Modify gradients after backward and before the optimizer step.

    Gradients are true gradients here (after ``GradScaler.unscale_`` when one is used), so a
    regularizer's strength never depends on the loss scale. Write into ``param.grad`` in place.
    In a multi-process (torchrun) run they are already averaged over the processes and ``model``
    is the plain model, so the change acts once on the synchronized gradient.
    """


@hookspec
def toolbox_batch_end(ctx: Context, model: nn.Module) -> None:
    """Called after each optimizer step (proximal updates, EMA teachers, ...)."""


@hookspec
def toolbox_epoch_end(ctx: Context, metrics: dict[str, float]) -> None:
    """An epoch ended; ``metrics`` (train loss terms, lr, ...) may be extended in place."""


@hookspec
def toolbox_state_dict(ctx: Context) -> dict[str, Any] | None:
    """Return what the plugin needs to continue the current phase mid-way, or ``None``.

    Called after every epoch of a phase except its last (after :func:`toolbox_epoch_end`); the
    result is saved under the plugin's name in ``checkpoints/partial.pt`` so that a killed run
    resumes at the next epoch instead of the phase start. Return plain data only (numbers,
    strings, lists, dicts, tensors, ``state_dict()``s of modules and optimizers): the file is
    loaded with ``weights_only=True``. State rebuilt by :func:`toolbox_phase_start` (e.g. teachers
    loaded from earlier checkpoints) and per-epoch counters need not be saved.
    """


@hookspec
def toolbox_load_state_dict(ctx: Context, state: dict[str, Any]) -> None:
    """Restore what :func:`toolbox_state_dict` returned when a phase continues after a kill.

    Called once, after :func:`toolbox_phase_start` (``ctx.start_epoch`` > 0 there) and instead of
    :func:`toolbox_model_surgery`, which is not called again: the model, ``ctx.masks``, ``ctx.records``,
    ``ctx.phase_metrics`` and ``ctx.optimizer`` already hold their values at the end of epoch
    ``ctx.start_epoch``. A plugin whose model-surgery hook keeps state on itself restores it here. Tensors
    arrive on the CPU; move them to ``ctx.device``. Only called for plugins that saved a state.
    """


@hookspec
def toolbox_phase_end(ctx: Context) -> None:
    """The phase finished training, before evaluation and the checkpoint.

    Store anything that must survive a resume in ``ctx.masks`` (bool tensors per BN layer) or
    ``ctx.records`` (plain data: numbers, strings, lists, dicts, tensors); both are saved in
    the phase's checkpoint. Put numbers for the results table in ``ctx.phase_metrics``.
    """
