"""Results tables (md/csv/json) and top-1 plots of a run and of several runs side by side."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

from toolbox.run.update_report import plot_class_changes, updates_markdown
from toolbox.storage.atomic import atomic_savefig, atomic_write_json, atomic_write_text


def _fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, missing values as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def shows_top5(records: list[dict[str, Any]], key: str = "top5") -> bool:
    """Whether a table of ``records`` gets a top-5 column: some record has one (runs of at most five
    classes record none: :func:`toolbox.run.engine.has_top5`)."""
    return any(record.get(key) is not None for record in records)


def served_cell(step: dict[str, Any]) -> str:
    """The top-1 of the model ``serve/step{k}.pt`` holds and its phase, e.g. ``98.89 (learn)``."""
    served = step.get("served")
    return "-" if not served else f"{_fmt(served['top1'])} ({served['phase']})"


def run_markdown(results: dict[str, Any]) -> str:
    """Markdown summary of one run: a row per step, then a row per phase."""
    config = results["config"]
    top5 = shows_top5(results["steps"])
    lines = [
        f"# Run: {config['arch']} on {config['dataset']}, plugins: {', '.join(config['plugins']) or 'none'}",
        "",
        f"Data: {results.get('dataset_source', '?')}; {config['steps']} steps, seed {config['seed']}.",
        "",
        "| step | top-1 % | " + ("top-5 % | " if top5 else "") + "served top-1 % (phase) | train s | params | MMACs "
        "| sparsity |",
        "|---:|---:|" + ("---:|" if top5 else "") + "---:|---:|---:|---:|---:|",
    ]
    for step in results["steps"]:
        lines.append(
            f"| {step['step']} | {_fmt(step.get('top1'))} | " + (f"{_fmt(step.get('top5'))} | " if top5 else "")
            + f"{served_cell(step)} | {_fmt(step.get('train_seconds'), 1)} | {step.get('params', '-')} | "
            f"{_fmt(step['macs'] / 1e6 if step.get('macs') else None, 1)} | {_fmt(step.get('sparsity'), 3)} |"
        )
    lines += ["", "| step | phase | epochs | images | top-1 % | " + ("top-5 % | " if top5 else "") + "train s |",
              "|---:|---|---:|---:|---:|" + ("---:|" if top5 else "") + "---:|"]
    for step in results["steps"]:
        for phase in step["phases"]:
            lines.append(
                f"| {step['step']} | {phase['phase']} | {phase['epochs']} | {phase['images']} | "
                f"{_fmt(phase['top1'])} | " + (f"{_fmt(phase.get('top5'))} | " if top5 else "")
                + f"{_fmt(phase['train_seconds'], 1)} |"
            )
    updates = updates_markdown(results["steps"])
    return "\n".join(lines + arrivals_lines(results.get("arrivals"))) + "\n" + (f"\n{updates}" if updates else "")


def arrivals_lines(arrivals: dict[str, Any] | None) -> list[str]:
    """The arrivals of a run split by ``--split`` other than stratified: a line per step with its
    images, classes present and class counts (ascending label)."""
    if not arrivals:
        return []
    lines = ["", f"Arrivals (--split {arrivals['split']}), images of each class (ascending label) per step:", "",
             "| step | images | classes present | class counts |", "|---:|---:|---:|---|"]
    for step, counts in enumerate(arrivals["class_counts"], 1):
        lines.append(f"| {step} | {sum(counts)} | {sum(c > 0 for c in counts)}/{len(counts)} | "
                     f"{' '.join(map(str, counts))} |")
    return lines


def run_title(results: dict[str, Any]) -> str:
    """``sst+aod on synthetic (cifar_resnet20), 4 steps``: what a run's plots show."""
    config = results.get("config") or {}
    method = "+".join(config.get("plugins") or []) or "no plugins"
    steps = config.get("steps") or len(results.get("steps") or [])
    return f"{method} on {config.get('dataset', '?')} ({config.get('arch', '?')}), {steps} step{'s' if steps != 1 else ''}"


def plot_top1(results: dict[str, Any], path: Path) -> None:
    """Save a plot of top-1 after every step (and after every phase, as small markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    steps = results["steps"]
    ax.plot([s["step"] for s in steps], [s["top1"] for s in steps], marker="o", label="end of step", zorder=2)
    phases = list(dict.fromkeys(p["phase"] for s in steps for p in s["phases"]))
    markers = dict(zip(phases, "s^vDP*X"))
    for phase in phases:  # one legend entry per phase; its points sit left of their step, never on it
        points = [(s["step"] - 0.5 + (i + 1) / (len(s["phases"]) + 1) * 0.5, p["top1"])
                  for s in steps for i, p in enumerate(s["phases"]) if p["phase"] == phase]
        ax.scatter(*zip(*points), s=28, marker=markers.get(phase, "o"), alpha=0.85, zorder=3,
                   label=f"after the {phase} phase")
    ax.set_title(run_title(results), fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 on the full test set (%)")
    ax.set_xticks([s["step"] for s in steps])
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)  # clear of the points
    atomic_savefig(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_run_report(run_dir: Path, results: dict[str, Any]) -> None:
    """Write results.json, results.md and top1_per_step.png into ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "results.json", results)
    atomic_write_text(run_dir / "results.md", run_markdown(results))
    if results["steps"]:
        plot_top1(results, run_dir / "top1_per_step.png")
        plot_class_changes(results["steps"], run_dir / "class_top1_change.png", run_title(results))


# --------------------------------------------------------------------- across runs and seeds
IGNORED_KEYS = {"seed", "seeds", "out", "data_root", "device", "threads"}
STEP_KEYS = ("top1", "train_seconds")

log = logging.getLogger("toolbox")


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding results.json) at or below each of ``paths``."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "results.json").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.rglob("results.json")))
    return sorted(set(found))


def _config_key(config: dict[str, Any]) -> str:
    """The recorded config without what varies between seeds of one experiment."""
    import json

    return json.dumps({k: v for k, v in config.items() if k not in IGNORED_KEYS}, sort_keys=True, default=str)


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/results.json`` if it holds a run's results (a config and per-step numbers); else
    ``None``, with a warning naming it."""
    import json

    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("Left out %s: it cannot be read (%s).", path, (str(exc).splitlines() or [type(exc).__name__])[0])
        return None
    steps = results.get("steps") if isinstance(results, dict) else None
    if not (isinstance(steps, list) and isinstance(results.get("config"), dict) and "seed" in results["config"]
            and all(isinstance(s, dict) and "step" in s and all(isinstance(s.get(k), (int, float)) for k in STEP_KEYS)
                    and isinstance(s.get("top5"), (int, float, type(None))) for s in steps)):
        log.warning("Left out %s: it does not hold a run's results (a config and per-step top-1, top-5 and train "
                    "seconds).", path)
        return None
    return results


def group_runs(run_dirs: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """Results of each run grouped by experiment (same recorded config but the seed), labelled;
    a run whose results.json cannot be read is left out with a warning (:func:`read_results`)."""
    return group_results([r for r in map(read_results, run_dirs) if r is not None])


def group_results(all_results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs' results grouped by experiment (same recorded config but the seed), labelled."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for results in all_results:
        groups.setdefault(_config_key(results["config"]), []).append(results)
    labelled: dict[str, list[dict[str, Any]]] = {}
    configs = {key: runs[0]["config"] for key, runs in groups.items()}
    for key, runs in groups.items():
        config = configs[key]
        label = ",".join(config.get("plugins") or []) or "plain"
        clashes = [other for k, other in configs.items() if k != key
                   and (",".join(other.get("plugins") or []) or "plain") == label]
        if clashes:
            differing = sorted({k for other in clashes for k, v in config.items()
                                if k not in IGNORED_KEYS and other.get(k) != v})
            label += " (" + ", ".join(f"{k}={config[k]}" for k in differing) + ")"
        labelled[label] = runs
    return labelled


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, var ** 0.5


def summarize(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method and step: top-1 mean/std over seeds and the step's costs."""
    rows = []
    for label, runs in groups.items():
        steps = min(len(r["steps"]) for r in runs)
        for index in range(steps):
            records = [r["steps"][index] for r in runs]
            top1, top1_std = mean_std([s["top1"] for s in records])
            seconds, _ = mean_std([s["train_seconds"] for s in records])
            sparsity = [s["sparsity"] for s in records if s.get("sparsity") is not None]
            rows.append({"method": label, "step": records[0]["step"], "seeds": len(records),
                         "seed_list": sorted(r["config"]["seed"] for r in runs),
                         "top1_mean": top1, "top1_std": top1_std,
                         "params": records[0].get("params"), "macs": records[0].get("macs"),
                         "sparsity": mean_std(sparsity)[0] if sparsity else None,
                         "train_seconds": seconds, **top5_summary(records), **flip_summary(records)})
    return rows


def top5_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """``top5_mean`` over the seeds' records that have a top-5; empty for runs of five classes or fewer."""
    present = [r["top5"] for r in records if r.get("top5") is not None]
    return {"top5_mean": mean_std(present)[0]} if present else {}


def flip_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Negative flip rate (mean and std over seeds, fractions) and how many seeds' models were
    promoted, for one step's records; empty for steps without a review."""
    flips = [r["update"]["nfr"] for r in records if r.get("update")]
    promoted = [bool(r["promotion"]["promoted"]) for r in records if r.get("promotion")]
    summary: dict[str, Any] = {}
    if flips:
        summary["nfr_mean"], summary["nfr_std"] = mean_std(flips)
    if promoted:
        summary["promoted"] = f"{sum(promoted)}/{len(promoted)}"
    return summary


def rows_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table per step of the summary rows; one table for one method (a row per step),
    with "± std" only where there are several seeds."""
    if len({r["method"] for r in rows}) == 1:
        return single_method_markdown(rows)
    lines = []
    top5 = shows_top5(rows, "top5_mean")
    for step in sorted({r["step"] for r in rows}):
        lines += [f"### Step {step}", "",
                  "| method | seeds | top-1 % (mean ± std) | " + ("top-5 % | " if top5 else "")
                  + "params | MMACs | sparsity | train s | negative flips % | promoted |",
                  "|---|---:|---:|" + ("---:|" if top5 else "") + "---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["step"] == step):
            flips = f"{100 * r['nfr_mean']:.2f} ± {100 * r['nfr_std']:.2f}" if "nfr_mean" in r else "-"
            lines.append(
                f"| {r['method']} | {r['seeds']} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} | "
                + (f"{_fmt(r.get('top5_mean'))} | " if top5 else "")
                + f"{r['params'] or '-'} | {_fmt(r['macs'] / 1e6 if r['macs'] else None, 1)} | "
                f"{_fmt(r['sparsity'], 3)} | {r['train_seconds']:.1f} | {flips} | {r.get('promoted', '-')} |")
        lines.append("")
    return "\n".join(lines)


def single_method_markdown(rows: list[dict[str, Any]]) -> str:
    """One table, a row per step, for the rows of one method (one run or its seeds)."""
    seeds = max(r["seeds"] for r in rows)
    top1 = "top-1 % (mean ± std)" if seeds > 1 else "top-1 %"
    top5 = shows_top5(rows, "top5_mean")
    lines = [f"{rows[0]['method']} ({seeds} seed{'s' if seeds > 1 else ''})", "",
             f"| step | {top1} | " + ("top-5 % | " if top5 else "") + "params | MMACs | sparsity | train s |",
             "|---:|---:|" + ("---:|" if top5 else "") + "---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["step"]):
        cell = f"{r['top1_mean']:.2f}" + (f" ± {r['top1_std']:.2f}" if r["seeds"] > 1 else "")
        lines.append(f"| {r['step']} | {cell} | " + (f"{_fmt(r.get('top5_mean'))} | " if top5 else "")
                     + f"{r['params'] or '-'} | "
                     f"{_fmt(r['macs'] / 1e6 if r['macs'] else None, 1)} | {_fmt(r['sparsity'], 3)} | "
                     f"{r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def steps_markdown(rows: list[dict[str, Any]]) -> str:
    """One table for all steps: a line per step, a column per method, cells "top-1 mean ± std
    (train s)" (no std for a single seed); the best mean of each step in bold."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["step"]): r for r in rows}
    lines = ["| step | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for step in sorted({r["step"] for r in rows}):
        best = max(r["top1_mean"] for r in rows if r["step"] == step)
        cells = []
        for method in methods:
            r = cell.get((method, step))
            if r is None:
                cells.append("-")
                continue
            text = f"{r['top1_mean']:.2f}" + (f" ± {r['top1_std']:.2f}" if r.get("seeds", 2) > 1 else "")
            cells.append(f"{f'**{text}**' if r['top1_mean'] == best else text} ({r['train_seconds']:.0f} s)")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_methods(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Top-1 vs step, one line per method, with a ±std band over seeds; ``title`` names the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["step"])
        xs = [r["step"] for r in mine]
        mean = [r["top1_mean"] for r in mine]
        std = [r["top1_std"] for r in mine]
        ax.plot(xs, mean, marker="o", label=f"{method} (n={mine[0]['seeds']})")
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 on the full test set (%)")
    ax.set_xticks(sorted({r["step"] for r in rows}))
    ax.set_title(textwrap.fill(title or "top-1 per step, mean ± std over seeds", 80), fontsize=9)  # never clipped
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def check_writable(out: Path) -> None:
    """Create ``out`` if missing and refuse (one sentence) a folder the report cannot be written into."""
    import os

    from toolbox.errors import UsageError

    probe = out / f".toolbox-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"Cannot write the report into {out} ({exc.strerror or exc}): the folder is not writable; "
                         "pass a writable --out DIR.") from None


def write_comparison(paths: list[Path], out: Path) -> list[dict[str, Any]]:
    """Build report.md/.csv/.json and top1_vs_step.png in ``out`` from run directories alone."""
    import csv
    import io

    from toolbox.errors import UsageError

    run_dirs = find_runs(paths)
    if not run_dirs:
        raise UsageError(f"No results.json found under {', '.join(map(str, paths))}; pass run directories.")
    loaded = {run_dir: read_results(run_dir) for run_dir in run_dirs}
    run_dirs = [run_dir for run_dir, results in loaded.items() if results is not None]
    rows = summarize(group_results([results for results in loaded.values() if results is not None]))
    if not rows:
        raise UsageError(f"None of the {len(loaded)} results.json under {', '.join(map(str, paths))} holds a run's "
                         "results (see the warnings); pass finished run directories.")
    out = Path(out)
    check_writable(out)
    atomic_write_json(out / "report.json", {"runs": [str(p) for p in run_dirs], "rows": rows})
    atomic_write_text(out / "report.md", f"# Comparison of {len(run_dirs)} runs\n\n" + rows_markdown(rows))
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row if k != "seed_list"))  # later steps add flips
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "report.csv", buffer.getvalue())
    configs = [results["config"] for results in loaded.values() if results is not None]
    datasets = ", ".join(dict.fromkeys(str(c.get("dataset", "?")) for c in configs))
    archs = ", ".join(dict.fromkeys(str(c.get("arch", "?")) for c in configs))
    plot_methods(rows, out / "top1_vs_step.png",
                 f"top-1 per step on {datasets} ({archs}), mean ± std over seeds, "
                 f"{len(configs)} run{'s' if len(configs) != 1 else ''}")
    return rows
