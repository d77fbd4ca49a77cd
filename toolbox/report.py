"""Results of a run as a markdown table, and a plot of top-1 per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolbox.checkpoint import atomic_write_json, atomic_write_text


def _fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, missing values as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def run_markdown(results: dict[str, Any]) -> str:
    """Markdown summary of one run: a row per step, then a row per phase."""
    config = results["config"]
    lines = [
        f"# Run: {config['arch']} on {config['dataset']}, plugins: {', '.join(config['plugins']) or 'none'}",
        "",
        f"Data: {results.get('dataset_source', '?')}; {config['steps']} steps, seed {config['seed']}.",
        "",
        "| step | top-1 % | top-5 % | train s | params | MMACs | sparsity |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in results["steps"]:
        lines.append(
            f"| {step['step']} | {_fmt(step.get('top1'))} | {_fmt(step.get('top5'))} | "
            f"{_fmt(step.get('train_seconds'), 1)} | {step.get('params', '-')} | "
            f"{_fmt(step['macs'] / 1e6 if step.get('macs') else None, 1)} | {_fmt(step.get('sparsity'), 3)} |"
        )
    lines += ["", "| step | phase | epochs | images | top-1 % | top-5 % | train s |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for step in results["steps"]:
        for phase in step["phases"]:
            lines.append(
                f"| {step['step']} | {phase['phase']} | {phase['epochs']} | {phase['images']} | "
                f"{_fmt(phase['top1'])} | {_fmt(phase['top5'])} | {_fmt(phase['train_seconds'], 1)} |"
            )
    return "\n".join(lines) + "\n"


def plot_top1(results: dict[str, Any], path: Path) -> None:
    """Save a plot of top-1 after every step (and after every phase, as small markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    steps = results["steps"]
    ax.plot([s["step"] for s in steps], [s["top1"] for s in steps], marker="o", label="end of step")
    for s in steps:
        n = len(s["phases"])
        xs = [s["step"] - 0.5 + (i + 1) / n * 0.5 for i in range(n)]
        ax.scatter(xs, [p["top1"] for p in s["phases"]], s=10, color="gray")
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 on the full test set (%)")
    ax.set_xticks([s["step"] for s in steps])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_run_report(run_dir: Path, results: dict[str, Any]) -> None:
    """Write results.json, results.md and top1_per_step.png into ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "results.json", results)
    atomic_write_text(run_dir / "results.md", run_markdown(results))
    if results["steps"]:
        plot_top1(results, run_dir / "top1_per_step.png")
