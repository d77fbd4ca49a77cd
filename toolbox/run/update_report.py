"""The run report's part on what each update changed and what was promoted: a markdown section
for results.md and the per-class plot ``class_top1_change.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolbox.storage.atomic import atomic_savefig


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100.0 * fraction:.2f}"


def _promotion_cell(promotion: dict[str, Any] | None) -> str:
    if not promotion:
        return "-"
    return ("yes" if promotion["promoted"] else "**no**") + f": {promotion['reason']}"


def _most_changed(per_class: dict[str, Any], most: int = 2) -> str:
    """The classes that fell and rose the most, by name, e.g. ``Coat -20.0, Bag +15.0``."""
    changes = sorted((v["change"], name) for name, v in per_class.items() if v["change"])
    picked = changes[:most] + [c for c in changes[-most:][::-1] if c not in changes[:most]]
    cells = [f"{name.replace('|', '/')} {change:+.1f}" for change, name in picked if change < 0]
    cells += [f"{name.replace('|', '/')} {change:+.1f}" for change, name in picked if change > 0]
    return ", ".join(cells) or "-"


def updates_markdown(steps: list[dict[str, Any]]) -> str:
    """A table of every step's flips against the step before (test images) and its promotion
    decision (validation images); empty when no step was reviewed."""
    reviewed = [s for s in steps if s.get("update") or s.get("promotion")]
    if not reviewed:
        return ""
    lines = ["## What each step changed", "",
             "Flips against the previous step's served model on the test images (negative: it was right, the new "
             "model is wrong); the promotion decision is judged on the validation images only.", "",
             "| step | negative flips % | positive flips % | classes down / up | most changed (points) | promoted |",
             "|---:|---:|---:|---:|---|---|"]
    for step in reviewed:
        update = step.get("update") or {}
        changes = [v["change"] for v in (update.get("per_class") or {}).values() if v["change"] is not None]
        moved = f"{sum(c < 0 for c in changes)} / {sum(c > 0 for c in changes)}" if changes else "-"
        lines.append(f"| {step['step']} | {_pct(update.get('nfr'))} | {_pct(update.get('pfr'))} | {moved} | "
                     f"{_most_changed(update.get('per_class') or {})} | {_promotion_cell(step.get('promotion'))} |")
    return "\n".join(lines) + "\n"


def _changes_in_class_order(per_class: dict[str, Any], classes: list[str]) -> list[float | None]:
    """``per_class``'s changes in the order of ``classes``. A run resumed across versions may key
    earlier steps by label number and later ones by class name; both list the classes in label
    order, so such steps are aligned by position (a class a step lacks counts as unchanged)."""
    if set(per_class) != set(classes) and len(per_class) == len(classes):
        return [v["change"] for v in per_class.values()]
    return [(per_class.get(c) or {}).get("change") for c in classes]


def plot_class_changes(steps: list[dict[str, Any]], path: Path, title: str = "") -> bool:
    """Save the per-class top-1 change of every reviewed step as grouped bars, ``title`` (the
    run: method, dataset, steps) above; ``False`` (nothing written) when no step has one."""
    updates = [(s["step"], s["update"]) for s in steps if s.get("update")]
    if not updates:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(updates[-1][1]["per_class"])
    width = 0.8 / len(updates)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(classes) * max(1, len(updates)) ** 0.5 + 2), 3.6))
    for i, (step, update) in enumerate(updates):
        values = [change or 0.0 for change in _changes_in_class_order(update["per_class"], classes)]
        ax.bar([x - 0.4 + width * (i + 0.5) for x in range(len(classes))], values, width,
               label=f"step {step} vs {update['against_step']} (NFR {100 * update['nfr']:.1f} %)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    ax.set_ylabel("top-1 change (points)")
    ax.set_title("Per-class top-1 change of each step's served model (test images)"
                 + (f"\n{title}" if title else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # never on a bar
    atomic_savefig(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True
