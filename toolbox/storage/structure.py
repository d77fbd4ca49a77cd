"""Structure records: the plain-data description of removed channels, replayed on a fresh model.

:func:`toolbox.pruning.compaction.compact` returns, with the compact model, a record that rebuilds the
architecture from a fresh timm model (:func:`apply_structure`), so checkpoints stay plain
state_dicts::

    {"format": "toolbox-structure/1",
     "ops": [{"module": "layer1.0.conv1", "pruner": "ConvPruner", "dim": "out",
              "size": 16, "keep": [0, 2, 3, ...]}, ...],
     "compactions": [{"filters": 448, "removed": 190, "carriers": 9, "spared": 0, "unfolded": []}]}

``ops`` are the per-module operations torch-pruning executed, in order: ``dim`` ``out``/``in``
of module ``module`` (named as in ``model.named_modules()``), which had ``size`` channels on that
dim and kept channels ``keep`` (indices into those ``size``). ``pruner`` is the torch-pruning
pruner class that ran (replayed as is). Compacting twice concatenates the ops
(:func:`merge_structures`).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from toolbox.errors import CheckpointError

STRUCTURE_FORMAT = "toolbox-structure/1"


def _pruner_instances() -> dict[str, Any]:
    """torch-pruning's registered per-layer pruners, by class name."""
    from torch_pruning.pruner import function

    return {type(p).__name__: p for p in function.PrunerBox.values() if p is not None}


def merge_structures(earlier: dict[str, Any] | None, later: dict[str, Any]) -> dict[str, Any]:
    """The record of two compactions applied one after the other (ops concatenated)."""
    if not earlier:
        return copy.deepcopy(later)
    _check_format(earlier)
    _check_format(later)
    return {"format": STRUCTURE_FORMAT, "ops": list(earlier["ops"]) + list(later["ops"]),
            "compactions": list(earlier.get("compactions", [])) + list(later.get("compactions", []))}


def _check_format(structure: Any) -> None:
    """Raise :class:`CheckpointError` unless ``structure`` is a structure record."""
    if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
        raise CheckpointError("The checkpoint's structure record is not a toolbox-structure/1 record; "
                              "it was written by another toolbox version.")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1 << 20


def check_structure(structure: Any) -> None:
    """Raise :class:`CheckpointError` (one sentence) unless ``structure`` is a well-formed record:
    ``ops`` of module/pruner names, ``dim`` in/out, a ``size`` and the ``keep`` indices below it."""
    _check_format(structure)
    ops, compactions = structure.get("ops"), structure.get("compactions", [])
    if not isinstance(ops, list) or not isinstance(compactions, list) \
            or not all(isinstance(c, dict) and all(_count(v) for k, v in c.items() if k != "unfolded")
                       for c in compactions):
        raise CheckpointError("The checkpoint's structure record has malformed ops or compactions; "
                              "use a checkpoint written by toolbox.")
    for op in ops:
        fine = (isinstance(op, dict) and isinstance(op.get("module"), str) and isinstance(op.get("pruner"), str)
                and op.get("dim") in ("in", "out") and _count(op.get("size")) and isinstance(op.get("keep"), list)
                and all(_count(i) and i < op["size"] for i in op["keep"]))
        if not fine:
            raise CheckpointError(f"The checkpoint's structure record has a malformed op ({str(op)[:60]}); "
                                  "use a checkpoint written by toolbox.")


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Replay a structure record on a freshly built model (in place) and return it.

    After this, ``model.load_state_dict`` of the compact model's state_dict works. Raises
    :class:`CheckpointError` with one sentence when the record does not fit the model.
    """
    check_structure(structure)
    pruners = _pruner_instances()
    for op in structure["ops"]:
        name, dim = op["module"], op["dim"]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"The structure record prunes {name!r}, which this model does not have; "
                                  "the checkpoint was made for another architecture.") from None
        pruner = pruners.get(op["pruner"])
        if pruner is None or dim not in ("out", "in"):
            raise CheckpointError(f"The structure record uses pruner {op['pruner']!r} / dim {dim!r}, "
                                  "which this torch-pruning does not provide; upgrade torch-pruning.")
        size = pruner.get_out_channels(module) if dim == "out" else pruner.get_in_channels(module)
        if size != op["size"]:
            raise CheckpointError(f"The structure record expects {name} to have {op['size']} {dim} channels "
                                  f"but it has {size}; the checkpoint was made for other model options.")
        keep = set(op["keep"])
        removed = [i for i in range(size) if i not in keep]
        if removed:
            (pruner.prune_out_channels if dim == "out" else pruner.prune_in_channels)(module, removed)
    return model
