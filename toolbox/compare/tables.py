"""The comparison's report: steps x rows table, paired differences, one sentence per step, files.

Everything is computed from the runs' results.json alone, so ``toolbox report DIR`` renders the
same report again (:func:`write_report`). Paired differences are the first row minus another, per
seed both finished, in top-1 points: mean ± sample std, with the seeds where the first row is ahead.
A step's difference is called clear when it has the same sign in every one of at least two seeds;
otherwise it is within noise.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from toolbox.compare.execute import finished, run_dir
from toolbox.run.results import mean_std, plot_methods, steps_markdown, summarize
from toolbox.storage.atomic import atomic_write_json, atomic_write_text

FILES = ("compare.md", "compare.json", "compare.csv", "top1_vs_step.png")


def load_groups(out: Path, rows: list[str], seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Finished runs' results by row (in row order); a run still training is left out."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        found = [r for seed in seeds if (r := finished(run_dir(out, row, seed))) is not None]
        if found:
            groups[row] = found
    return groups


def paired(first: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[list[float]]:
    """Per step: first minus other top-1, one value per seed both have (in seed order)."""
    mine = {r["config"]["seed"]: r for r in first}
    pairs = [(mine[r["config"]["seed"]], r) for r in sorted(other, key=lambda r: r["config"]["seed"])
             if r["config"]["seed"] in mine]
    if not pairs:
        return []
    steps = min(min(len(a["steps"]), len(b["steps"])) for a, b in pairs)
    return [[a["steps"][i]["top1"] - b["steps"][i]["top1"] for a, b in pairs] for i in range(steps)]


def paired_cell(diffs: list[float]) -> str:
    """``+1.23 ± 0.45 (3/3)``: mean ± std of the differences (seeds where the first row is ahead /
    seeds); ``+1.23 (1/1)`` for one seed."""
    mean, std = mean_std(diffs)
    spread = f" ± {std:.2f}" if len(diffs) > 1 else ""  # one seed: no spread to show
    return f"{mean:+.2f}{spread} ({sum(d > 0 for d in diffs)}/{len(diffs)})"


def paired_markdown(groups: dict[str, list[dict[str, Any]]]) -> str:
    """A line per step, a column per other row: the first row minus it (:func:`paired_cell`)."""
    names = list(groups)
    if len(names) < 2:
        return ""
    columns = {name: paired(groups[names[0]], groups[name]) for name in names[1:]}
    columns = {name: cells for name, cells in columns.items() if cells}
    if not columns:
        return ""
    lines = ["| step | " + " | ".join(f"vs {name}" for name in columns) + " |", "|---|" + "---:|" * len(columns)]
    for index in range(max(len(cells) for cells in columns.values())):
        lines.append(f"| {index + 1} | " + " | ".join(paired_cell(cells[index]) if index < len(cells) else "-"
                                                     for cells in columns.values()) + " |")
    return "\n".join(lines)


def verdicts(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One plain sentence per step: which row leads, and whether the first row's paired difference
    to the strongest other row is clear (same sign in every seed, at least two) or within noise."""
    names = list(groups)
    if len(names) < 2:
        return []
    summary = summarize(groups)
    sentences = []
    for step in sorted({r["step"] for r in summary}):
        means = {r["method"]: r["top1_mean"] for r in summary if r["step"] == step}
        first = names[0]
        rivals = [n for n in names[1:] if n in means]
        if first not in means or not rivals:
            continue
        rival = max(rivals, key=lambda n: means[n])
        diffs = paired(groups[first], groups[rival])
        diffs = diffs[step - 1] if len(diffs) >= step else []
        leader = max(means, key=lambda n: means[n])
        lead = f"Step {step}: {leader} leads ({means[leader]:.2f} %)"
        if len(diffs) < 2:
            sentences.append(f"{lead}; one paired seed, so no noise estimate.")
            continue
        mean, std = mean_std(diffs)
        ahead = sum(d > 0 for d in diffs)
        if ahead in (0, len(diffs)) and all(d != 0 for d in diffs):
            side = "ahead of" if mean > 0 else "behind"
            sentences.append(f"{lead}; {first} is {abs(mean):.2f} ± {std:.2f} points {side} the strongest other row "
                             f"{rival} in {len(diffs)}/{len(diffs)} seeds.")
        else:
            sentences.append(f"Step {step}: within noise: {first} - {rival} (the strongest other row) = "
                             f"{mean:+.2f} ± {std:.2f} points, ahead in {ahead}/{len(diffs)} seeds.")
    return sentences


def write_report(out: Path, plan: dict[str, Any], plot: bool = True) -> list[dict[str, Any]]:
    """Write compare.md/.json/.csv and (``plot``) the plot into ``out`` from its finished runs;
    return the summary rows (empty while no run has finished)."""
    out = Path(out)
    names = [row["name"] for row in plan["rows"]]
    groups = load_groups(out, names, plan["seeds"])
    summary = summarize(groups)
    if not summary:
        return summary
    matched = [f"{row['name']} matches {row['matches']}'s epochs per step" for row in plan["rows"]
               if row.get("matches") and row["name"] in groups]
    done = sum(len(runs) for runs in groups.values())
    text = "\n".join([
        f"# Comparison: {', '.join(groups)}", "",
        f"{done} of {len(names) * len(plan['seeds'])} runs finished (seeds {','.join(map(str, plan['seeds']))}); "
        "per seed every row sees the same shards, and rows with the same step-1 settings start from the same "
        "step-1 model and batch order." + (f" Equal compute: {'; '.join(matched)}." if matched else ""),
        "", "Top-1 % on the test set per step, mean ± std over seeds (mean train seconds of the step); the best in bold:",
        "", steps_markdown(summary), "",
        f"## Paired differences (same seed)\n\n{names[0]} minus each row, top-1 points, mean ± std "
        f"(seeds where {names[0]} is ahead / seeds):", "", paired_markdown(groups), "",
        "## Per step", "", *[f"- {s}" for s in verdicts(groups)], ""])
    atomic_write_text(out / "compare.md", text)
    pairs = {name: paired(groups[names[0]], groups[name]) for name in list(groups)[1:]} if names[0] in groups else {}
    atomic_write_json(out / "compare.json", {"rows": summary, "paired": pairs, "verdicts": verdicts(groups),
                                             "plan": plan})
    buffer = io.StringIO()
    fields = [k for k in summary[0] if k != "seed_list"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(summary)
    atomic_write_text(out / "compare.csv", buffer.getvalue())
    if plot:
        configs = [runs[0]["config"] for runs in groups.values() if runs]
        data = ", ".join(dict.fromkeys(f"{c.get('dataset', '?')} ({c.get('arch', '?')})" for c in configs))
        plot_methods(summary, out / "top1_vs_step.png",
                     f"toolbox compare on {data}: top-1 per step, mean ± std over {len(plan['seeds'])} seeds")
    return summary
