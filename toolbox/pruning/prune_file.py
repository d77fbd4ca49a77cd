"""``toolbox prune``: compact a checkpoint file and write the compact one with its structure record."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from toolbox.errors import UsageError
from toolbox.plugin_host.entry_points import import_model_packages
from toolbox.pruning.compaction import checkpoint_input_size, compact, example_batch
from toolbox.pruning.cost import compaction_report
from toolbox.sparsity.channels import require_ratio
from toolbox.storage import checkpoint as ckpt
from toolbox.storage.structure import merge_structures


def check_out_path(path: str | Path, out: str | Path) -> None:
    """Refuse an ``out`` that would overwrite the input or land among a run's phase checkpoints
    (resume and ``toolbox step`` read those; a compact file there would replace the run's state)."""
    source, target = Path(path).resolve(), Path(out).resolve()
    folder = target.parent
    in_run = folder.name == "checkpoints" and ((folder.parent / "config.yaml").is_file()
                                               or any(folder.glob("step*_*.pt")))
    elsewhere = folder.parent / "compact" / target.name if in_run else folder / f"{target.stem}_compact.pt"
    if target == source:
        raise UsageError(f"--out {out} is the checkpoint being pruned; write the compact model to another file, "
                         f"e.g. --out {elsewhere}.")
    if in_run:
        raise UsageError(f"--out {out} is inside the run directory {folder.parent}'s checkpoints/ folder, which "
                         f"resume and `toolbox step` read; write the compact model elsewhere, e.g. --out {elsewhere}.")


def prune_checkpoint(path: str | Path, out: str | Path, ratio: float | None = None,
                     repeats: int = 5, batch_sizes: Sequence[int] = (1, 256),
                     input_size: Sequence[int] | None = None, round_to: int = 1) -> dict[str, float]:
    """Compact a toolbox checkpoint and write the compact one to ``out``; return the report.

    An explicit ``ratio`` removes that fraction of filters by BN |gamma| (torch-pruning's BN-scale
    importance); without it the checkpoint's masks (from ``sst``) are used; with neither it is a
    :class:`UsageError`. The written checkpoint holds the compact state_dict, no masks, and the
    structure record merged into ``records["structure"]`` (so compacting twice works) and the
    normalization the model was trained with; ``out`` may not be ``path`` nor in a run's
    ``checkpoints/`` folder (:func:`check_out_path`). It loads
    with ``load_checkpoint`` + ``model_from_checkpoint``, ``--init`` and ``toolbox eval``.
    ``round_to`` is :func:`compact`'s; ``repeats``/``batch_sizes`` are the latency measurement's
    (``repeats=0`` skips it) and ``input_size`` overrides the (C, H, W) guessed from the dataset.
    """
    check_out_path(path, out)
    data = ckpt.load_checkpoint(path)
    masks = {k: v for k, v in (data.get("masks") or {}).items() if bool(torch.as_tensor(v).any())}
    if ratio is None and not masks:
        raise UsageError(f"{path} has no masks of unimportant filters; pass --ratio R (in [0, 1)) to remove "
                         "the filters with the smallest BN |gamma|.")
    if ratio is not None:
        require_ratio(ratio)
    import_model_packages()
    model = ckpt.model_from_checkpoint(data)
    size = tuple(input_size) if input_size is not None else checkpoint_input_size(data, model)
    small, structure = compact(model, masks=None if ratio is not None else masks, ratio=ratio,
                               example_inputs=example_batch(model, size), round_to=round_to)
    records = dict(data.get("records") or {})
    records[ckpt.STRUCTURE_RECORD] = merge_structures(records.get(ckpt.STRUCTURE_RECORD), structure)
    result = ckpt.make_checkpoint(
        small, arch=data["arch"], num_classes=data["num_classes"], in_chans=data["in_chans"],
        model_kwargs=data.get("model_kwargs") or {}, step=data["step"], phase=data["phase"], masks={},
        records=records, options=data.get("options") or {}, results=data.get("results") or [], optimizer=None,
        input_size=data.get("input_size"), classes=data.get("classes"),
        normalization=ckpt.recorded_normalization(data, path))
    if data.get("preprocessing") is not None:  # a pruned serve file keeps its recipe
        result["preprocessing"] = data["preprocessing"]
    ckpt.save_checkpoint(Path(out), result)
    report = compaction_report(model, small, size, repeats=repeats, batch_sizes=batch_sizes)
    stats = structure["compactions"][-1]
    report.update(filters=float(stats["filters"]), filters_removed=float(stats["removed"]),
                  filters_kept_constant=float(stats["carriers"]), filters_spared=float(stats["spared"]))
    return report
