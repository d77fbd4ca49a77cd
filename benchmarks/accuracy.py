"""Accuracy benchmark: sst,aod,msl against fine-tuning, shrink and perturb, LwF, EWC, scratch and
joint training, over seeds; untuned or tuned on validation data with the same budget per row.

    python benchmarks/accuracy.py [--protocol primary|single|secondary|ablations|tune] [--seeds 0,1,2]
                                  [--tuned] [--only ROW[,ROW]] [--out runs/accuracy] [--quick]

Protocols (PAPER.md, "The CPU protocol"; Fashion-MNIST stands in for CIFAR-100):
- primary: 4 shards of 125 images per class, 30 epochs per phase, full test set after every step;
- single: the single-step variant (2 shards). With ``per_class`` fixed, the 2-shard split's shards
  are exactly the first two shards of the 4-shard split and every phase's seed depends only on
  (seed, step, phase), so a 2-step run is bit-identical to the first two steps of the primary run
  except that the method's last step ends after AOD (no SST after the last shard). This protocol
  therefore reads the primary runs: step 2 of the method is its AOD phase. Run primary first.
- secondary: the full 15,000-image shards, 3 epochs per phase;
- ablations: variants of the method, each forked from the primary run of one seed (default 0)
  after the phase it shares with it (paired: same shards, same step-1 model, same batch order),
  read out where the change can act (the single-step readout, step 2 after AOD, unless noted);
- tune: one ``toolbox tune`` study per row on the primary protocol's validation split, seed 0,
  the same budget for every row (``--trials``, default 8; see ``tuning.py``). Then ``--tuned``
  runs primary, single or secondary with every row's chosen values (seeds 0-4 by default), in
  ``<out>/<protocol>_tuned/``.
``--dataset cifar100 --data-root DIR --arch cifar_resnet110`` runs the same rows on CIFAR-100;
``--precision fp32 --out runs/accuracy-fp32`` runs them without bf16 autocast (paired by seed).

The protocols are ``toolbox compare`` configs (``benchmarks/configs/accuracy_*.yaml``) and the rows
and paired table are ``toolbox compare``'s (``toolbox.compare.plan``, ``toolbox.compare.tables``); this
script keeps what compare has not: the committed records, the single-step view, the forked
ablations and the tuning stage's records. On your own data, run ``toolbox compare`` itself.

Rows: the method (``sst,aod,msl``); ``finetune`` with the method's epochs per phase;
``finetune_2x`` and ``shrink_perturb_2x`` with the method's total epochs per step (two phases per
step -> twice the epochs); ``lwf``; ``ewc``; ``scratch`` (a fresh model per step); ``joint`` (the
upper bound that needs the old data). Every row of a seed shares the shards, the step-1
initialization and the batch order (same seed), so differences are paired per seed.
Each run lives in ``<out>/<protocol>/<row>/seed<k>/``: a killed benchmark picks up where it
stopped (finished runs are skipped, interrupted ones resumed), and ``--only`` reruns one row
(delete its directory first to start it afresh). A finished run's results.json is also kept in
``--records`` (default ``benchmarks/records/<name of --out>/``, committed): a fresh checkout
takes finished runs from there instead of training them again. The table (report.md: mean ± std
per step, the paired differences method - row, train seconds), CSV, JSON and the top-1 vs step
plot with error bands are written to ``<out>/<protocol>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from toolbox.compare.plan import plan_rows
from toolbox.compare.tables import paired_markdown as compare_paired_markdown
from toolbox.options import read_mapping
from toolbox.plugin_host.calls import declared_options
from toolbox.plugin_host.manager import load_plugins
from toolbox.run.directory import mark
from toolbox.run.results import plot_methods, rows_markdown, steps_markdown, summarize
from toolbox.run.start import resume_run, start_run
from toolbox.storage import atomic as tbio
from toolbox.storage import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tuning  # noqa: E402  (the tuning stage, next to this file)

METHOD = "sst_aod_msl"
#: The methods compared (``toolbox compare --methods``), the first measured against the others.
METHODS = [("sst", "aod", "msl"), ("finetune",), ("shrink_perturb",), ("lwf",), ("ewc",), ("scratch",), ("joint",)]
#: The rows kept of the plan ``toolbox compare`` makes from them (its equal-compute rows ``_2x``
#: come from the phases the plugins plan: the method's learn + sparsify per step).
ROWS = ["sst_aod_msl", "finetune", "finetune_2x", "shrink_perturb_2x", "lwf", "ewc", "scratch", "joint"]
CONFIGS = Path(__file__).resolve().parent / "configs"  #: the protocols as configs of ``toolbox compare``
PROTOCOL_FILES = {"primary": "accuracy_primary.yaml", "secondary": "accuracy_secondary.yaml", "quick": "accuracy_quick.yaml"}


def protocol_config(name: str) -> dict[str, Any]:
    """The run options of protocol ``name`` (its config in benchmarks/configs/)."""
    return read_mapping(CONFIGS / PROTOCOL_FILES[name])


def rows(base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The benchmark's rows: run options that differ between methods, as ``toolbox compare`` plans them."""
    planned = {row.name: row for row in plan_rows(base, METHODS)}
    return {name: {"plugins": list(planned[name].plugins), **planned[name].changes} for name in ROWS}


@dataclass(frozen=True)
class Ablation:
    """A variant of the method forked from its base row's run after the phase ``fork``."""

    what: str
    base: str = METHOD
    fork: tuple[int, str] = (1, "sparsify")
    until: tuple[int, str] | None = (2, "learn")  #: last phase trained (None: to the end)
    changes: dict[str, Any] = field(default_factory=dict)  #: run options
    plugin: dict[str, Any] = field(default_factory=dict)  #: plugin options


ABLATIONS: dict[str, Ablation] = {
    "control": Ablation("the method itself, forked like the others and run to the end with the code of the "
                        "ablations: the paired reference of every row below", until=None),
    "no_sst": Ablation("aod alone: no SST phase; aod re-initializes the --ratio filters of smallest abs(gamma) "
                       "of the plainly trained step-1 model", base="finetune", fork=(1, "learn"),
                       changes={"plugins": ["aod"]}),
    "no_msl": Ablation("sst,aod: SST of steps 2-3 without the multi-step loss (read out at step 4)",
                       fork=(2, "learn"), until=None, changes={"plugins": ["sst", "aod"]}),
    "no_reinit": Ablation("aod keeps the sparse filters (--reinit none): distillation only", plugin={"reinit": "none"}),
    "ratio0.3": Ablation("--ratio 0.3 (SST of step 1 and AOD of step 2)", fork=(1, "learn"), plugin={"ratio": 0.3}),
    "ratio0.7": Ablation("--ratio 0.7 (SST of step 1 and AOD of step 2)", fork=(1, "learn"), plugin={"ratio": 0.7}),
    "msl_first_step": Ablation("--msl-first-step: step 1's SST also distills from the pre-SST model "
                               "(FINDINGS 5's first remedy for SST's cost)", fork=(1, "learn"),
                               plugin={"msl_first_step": True}),
    "reinit_orthogonal": Ablation("--reinit orthogonal", plugin={"reinit": "orthogonal"}),
    "reinit_diverse": Ablation("--reinit diverse", plugin={"reinit": "diverse"}),
    "reinit_gamma0": Ablation("--reinit-gamma 0 (fresh filters dead behind ReLU)", plugin={"reinit_gamma": 0.0}),
    "reinit_gamma1": Ablation("--reinit-gamma 1 (the paper's inferred value)", plugin={"reinit_gamma": 1.0}),
    "teacher_ema": Ablation("--teacher ema", plugin={"teacher": "ema"}),
    "teacher_mutual": Ablation("--teacher mutual", plugin={"teacher": "mutual"}),
    "adapt_constant": Ablation("--adapt constant (no adaptive weight)", plugin={"adapt": "constant"}),
    "alpha0": Ablation("--alpha 0 (no distillation in AOD)", plugin={"alpha": 0.0}),
    "alpha0.5": Ablation("--alpha 0.5", plugin={"alpha": 0.5}),
    "alpha2": Ablation("--alpha 2", plugin={"alpha": 2.0}),
}


# ----------------------------------------------------------------------------- running
def run_row(values: dict[str, Any], run_dir: Path, record: Path | None = None) -> dict[str, Any]:
    """Finish one run: take its record (a finished run's results.json kept in ``record``, e.g. from
    an earlier checkout) when its config matches, skip it when complete, resume it when
    interrupted, else start it; a finished run's results are copied to ``record``."""
    if record is not None and record.is_file():
        kept = json.loads(record.read_text())
        if _same_config(kept["config"], values):
            return kept
        logging.warning("%s holds another config; running %s again.", record, run_dir)
    results = _finished(run_dir)
    if results is None:
        if (run_dir / "config.yaml").is_file():
            results = resume_run(run_dir).execute()
        else:
            results = start_run({**values, "out": str(run_dir)}).execute()
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        tbio.atomic_write_json(record, results)
    return results


def _same_config(recorded: dict[str, Any], values: dict[str, Any]) -> bool:
    """Whether a recorded run's config has every value the benchmark asks for (the machine's
    threads aside; plugin options may sit in the config's ``plugin`` mapping)."""
    plugin = recorded.get("plugin") or {}
    for key, value in values.items():
        if key in ("threads", "out"):
            continue
        have = recorded[key] if key in recorded else plugin.get(key, None)
        if isinstance(value, (int, float)) and isinstance(have, (int, float)) and not isinstance(value, bool):
            if abs(float(have) - float(value)) > 1e-12:
                return False
        elif have != value and not (key == "plugins" and list(have or []) == list(value)):
            return False
    return True


def _complete(run_dir: Path, results: dict[str, Any]) -> bool:
    """A run is complete when its last step has a checkpoint of its last phase."""
    last = results["steps"][-1]
    phase = last["phases"][-1]["phase"]
    return ckpt.phase_checkpoint_path(run_dir, last["step"], phase).is_file()


def fork_run(source: Path, target: Path, ablation: Ablation) -> dict[str, Any]:
    """Run ``ablation`` in ``target``: the source run's checkpoints up to the fork, its shards and
    config with the ablation's changes, then train to ``ablation.until``. Resumes when killed."""
    if not (target / "config.yaml").is_file():
        fork = ckpt.phase_checkpoint_path(source, *ablation.fork)
        if not fork.is_file():
            raise SystemExit(f"{fork} is missing: run the benchmark's primary protocol for this seed first.")
        done = [tuple(item) for item in ckpt.load_checkpoint(fork)["done"]]
        values = {**read_mapping(source / "config.yaml"), **ablation.changes, "out": str(target)}
        declared = declared_options(load_plugins(values["plugins"]))
        values["plugin"] = {k: v for k, v in {**values["plugin"], **ablation.plugin}.items() if k in declared}
        for step, phase in done:
            destination = ckpt.phase_checkpoint_path(target, int(step), str(phase))
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ckpt.phase_checkpoint_path(source, int(step), str(phase)), destination)
        for name in ("shards.json", "metrics.jsonl"):
            shutil.copy2(source / name, target / name)
        tbio.atomic_write_text(target / "config.yaml", yaml.safe_dump(values, sort_keys=False))
        mark(target)  # a run directory the toolbox made, so --resume accepts it
    return resume_run(target).execute(until=ablation.until)


# ----------------------------------------------------------------------------- reading
def load_results(folder: Path, names: list[str], seeds: list[int],
                 records: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Results of every row and seed whose run has finished (in its run directory, else kept in
    ``records/<row>/seed<k>.json``), by row name. A run still in progress is left out: its first
    steps beside other seeds' full runs would mix seeds within a row."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        for seed in seeds:
            run_dir = folder / name / f"seed{seed}"
            results = _finished(run_dir)
            if results is None and records is not None and (records / name / f"seed{seed}.json").is_file():
                results = json.loads((records / name / f"seed{seed}.json").read_text())
            if results is not None:
                groups.setdefault(name, []).append(results)
    return groups


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The results of a finished run in ``run_dir`` (all its steps, last checkpoint written), else None."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    done = len(results["steps"]) == results["config"]["steps"] and _complete(run_dir, results)
    return results if done else None


def truncate(results: dict[str, Any], steps: int) -> dict[str, Any]:
    """The results a ``steps``-step run would have: the last step ends after its first phase
    (learn), because no SST follows the last shard."""
    kept = [dict(s) for s in results["steps"][:steps]]
    if kept and len(kept) == steps:
        last = kept[-1]["phases"][0]
        kept[-1].update(phases=[last], top1=last["top1"], top5=last["top5"], train_seconds=last["train_seconds"],
                        params=last["params"], macs=last["macs"], sparsity=last.get("sparsity"))
    return {**results, "steps": kept}


def readout(results: dict[str, Any], step: int, phase: str | None = None) -> dict[str, Any] | None:
    """The record of ``phase`` of ``step`` (its last phase when ``phase`` is None), or None."""
    for entry in results["steps"]:
        if entry["step"] == step:
            phases = [p for p in entry["phases"] if phase is None or p["phase"] == phase]
            return phases[-1] if phases else None
    return None


def paired_markdown(groups: dict[str, list[dict[str, Any]]]) -> str:
    """Per step (a line) and row (a column): the method minus the row, paired by seed
    (:func:`toolbox.compare.tables.paired_markdown`, the method's row first)."""
    if METHOD not in groups:
        return ""
    return compare_paired_markdown({METHOD: groups[METHOD], **{k: v for k, v in groups.items() if k != METHOD}})


def sst_cost_markdown(groups: dict[str, list[dict[str, Any]]]) -> str:
    """SST's own accuracy cost at step 1: before vs after the SST phase, beside fine-tuning with
    the same total epochs (paired by seed)."""
    twice = {r["config"]["seed"]: r for r in groups.get("finetune_2x", [])}
    lines = ["| seed | step-1 learn | after SST (ratio reached) | SST cost | finetune_2x step 1 | method - finetune_2x |",
             "|---:|---:|---:|---:|---:|---:|"]
    for run in groups.get(METHOD, []):
        learn, sparse = readout(run, 1, "learn"), readout(run, 1, "sparsify")
        if learn is None or sparse is None:
            continue
        seed = run["config"]["seed"]
        other = twice[seed]["steps"][0]["top1"] if seed in twice else None
        versus = ("-", "-") if other is None else (f"{other:.2f}", f"{sparse['top1'] - other:+.2f}")
        lines.append(f"| {seed} | {learn['top1']:.2f} | {sparse['top1']:.2f} ({sparse.get('sparsity', 0):.3f}) | "
                     f"{sparse['top1'] - learn['top1']:+.2f} | {versus[0]} | {versus[1]} |")
    return "\n".join(lines)


def write_tables(groups: dict[str, list[dict[str, Any]]], folder: Path, title: str) -> list[dict[str, Any]]:
    """report.md (per-step table, paired differences, SST cost), report.json/.csv and the plot."""
    summary = summarize(groups)
    if not summary:
        return summary
    folder.mkdir(parents=True, exist_ok=True)
    text = (f"# {title}\n\nTop-1 % per step, mean ± std over seeds (mean train seconds of the step):\n\n"
            f"{steps_markdown(summary)}\n\n{rows_markdown(summary)}\n"
            "## Paired differences (same seed)\n\nMethod minus row, top-1 points, mean ± std (seeds where the "
            f"method is ahead / seeds):\n\n{paired_markdown(groups)}\n\n"
            f"## SST's own cost at step 1\n\n{sst_cost_markdown(groups)}\n")
    tbio.atomic_write_text(folder / "report.md", text)
    tbio.atomic_write_json(folder / "report.json", {"rows": summary})
    header = ["method", "step", "seeds", "top1_mean", "top1_std", "top5_mean", "params", "macs", "sparsity",
              "train_seconds"]
    csv = [",".join(header)] + [",".join("" if r.get(k) is None else str(r[k]) for k in header) for r in summary]
    tbio.atomic_write_text(folder / "report.csv", "\n".join(csv) + "\n")
    plot_methods(summary, folder / "top1_vs_step.png")
    return summary


def ablation_markdown(out: Path, seed: int, names: list[str]) -> str:
    """One line per ablation: its readout against the method's at the same step and phase."""
    base_path = out / "ablations" / "control" / f"seed{seed}" / "results.json"
    if not base_path.is_file():
        base_path = out / "primary" / METHOD / f"seed{seed}" / "results.json"
    if not base_path.is_file():
        return ""
    base = json.loads(base_path.read_text())
    reference = "control" if base_path.parent.parent.name == "control" else "primary run"
    lines = [f"| ablation (seed {seed}) | what | readout | top-1 | {reference} | difference | train s (ablated phases) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name in names:
        if name == "control":
            continue
        path = out / "ablations" / name / f"seed{seed}" / "results.json"
        if not path.is_file():
            continue
        ablation, results = ABLATIONS[name], json.loads(path.read_text())
        step, phase = ablation.until or (results["steps"][-1]["step"], None)
        mine, theirs = readout(results, step, phase), readout(base, step, phase)
        if mine is None or theirs is None:
            continue
        seconds = sum(p["train_seconds"] for s in results["steps"] for p in s["phases"]
                      if (s["step"], p["phase"]) > ablation.fork)
        where = f"step {step}" + (f" {phase}" if phase else "")
        lines.append(f"| {name} | {ablation.what} | {where} | {mine['top1']:.2f} | {theirs['top1']:.2f} | "
                     f"{mine['top1'] - theirs['top1']:+.2f} | {seconds:.0f} |")
    primary = out / "primary" / METHOD / f"seed{seed}" / "results.json"
    if reference == "control" and primary.is_file():
        first = json.loads(primary.read_text())
        pairs = ", ".join(f"{a['top1']:.2f} vs {b['top1']:.2f}" for a, b in zip(base["steps"], first["steps"]))
        lines.append(f"\ncontrol vs the primary run of seed {seed}, top-1 per step: {pairs}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run (or finish) the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["primary", "single", "secondary", "ablations", "tune"], default="primary")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --tuned 0-4; ablations: 0)")
    parser.add_argument("--tuned", action="store_true",
                        help="run every row with its values chosen by --protocol tune (folder <protocol>_tuned)")
    parser.add_argument("--records", default=None,
                        help="folder of finished runs' results and tuning summaries, kept across checkouts "
                             "(default benchmarks/records/<name of --out>; 'none' keeps none; --quick: none unless given)")
    parser.add_argument("--trials", type=int, default=tuning.TRIALS, help="tuning budget per row (--protocol tune)")
    parser.add_argument("--only", default=None, help="comma-separated rows or ablations to run (default: all)")
    parser.add_argument("--out", default="runs/accuracy")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--arch", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "auto"],
                        help="autocast of every run (default bf16; pair with another --out to compare)")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic run (for tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    out = Path(args.out)
    default_seeds = "0" if args.protocol == "ablations" else "0,1,2,3,4" if args.tuned else "0,1,2"
    seeds = [int(s) for s in (args.seeds or default_seeds).split(",")]
    records = (Path(args.records) if args.records not in (None, "none") else
               None if args.records == "none" or args.quick else Path(__file__).resolve().parent / "records" / out.name)
    suffix = "_tuned" if args.tuned else ""

    if args.protocol == "single":
        groups = {name: [truncate(r, 2) for r in runs]
                  for name, runs in load_results(out / f"primary{suffix}", ROWS, seeds,
                                                 records and records / f"primary{suffix}").items()}
        summary = write_tables(groups, out / f"single{suffix}",
                               "Single-step variant (2 shards), read from the primary runs")
        print(rows_markdown(summary))
        return summary

    if args.protocol == "ablations":
        chosen = _chosen(parser, args.only, list(ABLATIONS))
        for seed in seeds:
            for name in chosen:
                ablation = ABLATIONS[name]
                if args.threads is not None:
                    ablation = replace(ablation, changes={**ablation.changes, "threads": args.threads})
                fork_run(out / "primary" / ablation.base / f"seed{seed}", out / "ablations" / name / f"seed{seed}",
                         ablation)
                print(f"ablation {name} seed {seed} done", flush=True)
        text = "\n\n".join(ablation_markdown(out, seed, chosen) for seed in seeds)
        tbio.atomic_write_text(out / "ablations" / "report.md", f"# Ablations\n\n{text}\n")
        print(text)
        return []

    protocol = "primary" if args.protocol == "tune" else args.protocol
    base = protocol_config("quick" if args.quick else protocol)
    for key in ("dataset", "data_root", "arch", "threads", "precision"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    table = rows(base)
    chosen = _chosen(parser, args.only, list(table))
    if args.protocol == "tune":
        if records is None:
            parser.error("--protocol tune keeps its results in --records; do not pass --records none")
        for name in chosen:
            found = tuning.tune_row(name, {**base, **table[name]}, out, records, args.trials, args.threads)
            print(f"tuned {name}: {found['params']} (validation {found['value']:.2f})", flush=True)
        text = tuning.tuning_markdown(records, list(table))
        tbio.atomic_write_text(out / "tuning" / "report.md", f"# Tuning (budget {args.trials} trials per row)\n\n{text}\n")
        print(text)
        return []
    if args.tuned:
        table = {name: {**table[name], **tuning.tuned_values(records, name)} if name in chosen else table[name]
                 for name in table}
    folder = out / f"{protocol}{suffix}"
    for seed in seeds:
        for name in chosen:
            record = None if records is None else records / folder.name / name / f"seed{seed}.json"
            results = run_row({**base, **table[name], "seed": seed}, folder / name / f"seed{seed}", record)
            summary = ", ".join(f"{s['top1']:.2f}" for s in results["steps"])
            print(f"{protocol}{suffix} {name} seed {seed}: top-1 per step {summary}", flush=True)
    found = load_results(folder, list(table), seeds, records and records / folder.name)
    summary = write_tables(found, folder, f"Protocol {protocol}{suffix}")
    print(rows_markdown(summary))
    return summary


def _chosen(parser: argparse.ArgumentParser, only: str | None, known: list[str]) -> list[str]:
    """The rows named by ``--only`` (all when None); unknown names are a usage error."""
    chosen = only.split(",") if only else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return chosen


if __name__ == "__main__":
    main()
