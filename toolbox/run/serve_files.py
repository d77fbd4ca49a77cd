"""The model to serve after every step: ``RUN_DIR/serve/step{k}.pt``.

By default it is the step's learn-phase model (what the step learned from its data); with
``--serve compact`` it is the step's sparse model (after its last phase) with the masked filters
removed (:func:`toolbox.pruning.compaction.compact`, exact). Either way it is a toolbox checkpoint: a plain
dict loaded with ``weights_only=True`` holding ``arch``, ``num_classes``, ``in_chans``,
``model_kwargs``, ``state_dict``, the class names, the normalization and the preprocessing recipe
(``preprocessing``: :mod:`toolbox.data.recipe`), so it loads in three lines::

    import timm, torch, toolbox
    data = torch.load("runs/x/serve/step3.pt", weights_only=True)
    model = timm.create_model(data["arch"], num_classes=data["num_classes"], in_chans=data["in_chans"],
                              **data["model_kwargs"]); model.load_state_dict(data["state_dict"])

or, for a compacted model too, ``model = toolbox.load_model("runs/x/serve/step3.pt")``, or with its
preprocessing, ``toolbox.load_predictor("runs/x")``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from toolbox.data.recipe import make_recipe
from toolbox.pruning.compaction import compact, example_batch
from toolbox.storage import checkpoint as ckpt

log = logging.getLogger("toolbox")


def serve_path(run_dir: Path, step: int) -> Path:
    """Where the model to serve after ``step`` lives."""
    return Path(run_dir) / "serve" / f"step{step}.pt"


def serve_checkpoint(model: nn.Module, masks: dict[str, Any] | None, *, compacted: bool, **meta: Any) -> dict[str, Any]:
    """The serve file's dict of ``model`` (compacted first when ``compacted`` and masks exist).

    ``meta``: ``arch``, ``num_classes``, ``in_chans``, ``model_kwargs``, ``step``, ``phase``,
    ``input_size``, ``classes``, ``mean``, ``std``, ``dataset`` (the data source's name, for the
    recipe).
    """
    records: dict[str, Any] = {}
    if compacted and masks and any(bool(m.any()) for m in masks.values()):
        model, structure = compact(model, masks=masks, example_inputs=example_batch(model, meta["input_size"]))
        records[ckpt.STRUCTURE_RECORD] = structure
    mean, std, dataset = meta.pop("mean"), meta.pop("std"), meta.pop("dataset", None)
    data = ckpt.make_checkpoint(model.eval(), masks={}, records=records, options={}, results=[], optimizer=None, **meta)
    data["normalization"] = {"mean": list(mean), "std": list(std)}
    data["preprocessing"] = make_recipe(channels=meta["in_chans"], image_size=meta["input_size"][-1], mean=mean,
                                        std=std, classes=meta.get("classes"), num_classes=meta["num_classes"],
                                        dataset=dataset)
    return data

