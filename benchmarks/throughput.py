"""Training throughput of the toolbox engine against a plain PyTorch loop, in one process.

    python benchmarks/throughput.py [--arch cifar_resnet20] [--dataset fashion_mnist]
                                    [--batch-size 128[,256]] [--batches 30] [--repeats 3]
                                    [--precision bf16] [--no-compile] [--out runs/throughput.json]
    python benchmarks/throughput.py --preset resnet110   # the paper's backbone (see PRESETS)

Same model, batch size and images everywhere; every figure is the median img/s of ``--repeats``
timed passes over ``--batches`` batches, after an untimed warm-up, on a freshly seeded model.
Several batch sizes (``--batch-size 128,256``) run the tables once per batch size (the JSON then
holds one record per batch size under ``runs``). A preset sets defaults; explicit flags win.
Tables (markdown on stdout, everything also in ``--out`` as JSON):

1. loops on pre-made batches (the loop alone): a plain hand-written SGD loop; the engine with no
   plugins; the engine with a no-op plugin implementing every hook (the hook machinery's cost);
   the engine with sst,aod,msl active, as at step 2 of a run: in an AOD phase, whose frozen
   teacher is the SST model (the ``--ratio`` 0.5 smallest-|gamma| filters at BN scale 0, masks
   set), distilled from its compact copy (the default) and from the dense model
   (``--compact-teacher false``), and in an SST phase with MSL (teacher: the AOD model, dense);
2. data pipeline end to end: the same plain loop fed live by the toolbox's BatchLoader, and by
   torchvision's PIL-transform DataLoader (0 and 2 workers);
3. settings: NCHW vs channels_last, fp32 vs bf16 autocast, 1 vs 2 threads, torch.compile;
4. the SST teacher's forward per batch: dense as it is, dense with BatchNorms folded, the compact
   copy and the compact copy with BatchNorms folded (the default), with the compact copy's MACs
   ratio, against the student's inference pass and training step;
5. the achieved fraction of the measured matmul peak (training FLOPs = 3 x forward = 6 x MACs).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import PilDataset  # noqa: E402

import toolbox  # noqa: E402,F401  (registers the CIFAR backbones)
from toolbox.context import Context  # noqa: E402
from toolbox.data import BatchLoader, ImageData, load_dataset  # noqa: E402
from toolbox.hookspecs import hookimpl  # noqa: E402
from toolbox.options import build_options  # noqa: E402
from toolbox.plugin_host import calls  # noqa: E402
from toolbox.plugin_host.calls import declared_options, model_surgery  # noqa: E402
from toolbox.plugin_host.manager import load_plugins, make_manager  # noqa: E402
from toolbox.pruning.compact_teacher import compact_teacher, inference_copy  # noqa: E402
from toolbox.pruning.cost import cost, count_macs  # noqa: E402
from toolbox.run.engine import Trainer, build_optimizer  # noqa: E402
from toolbox.runtime.device import autocast_context  # noqa: E402
from toolbox.sparsity import bn_l1  # noqa: E402
from toolbox.sparsity import channels as ch  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor]
TrainFn = Callable[[Iterable[Batch]], None]  # trains one pass over the given batches
Source = Callable[[int], Iterable[Batch]]  # the first k batches of a pipeline (drawn live or pre-made)
CPU = torch.device("cpu")
#: Argument defaults per preset (explicit flags win). ``resnet110``: the paper's backbone, at the
#: batch sizes of the paper's CIFAR runs; loops, teacher and the fraction of the peak.
PRESETS: dict[str, dict[str, Any]] = {
    "resnet110": {"arch": "cifar_resnet110", "batch_size": "128,256", "batches": 10, "tables": "1,4,5"},
}
#: The fraction of filters an SST phase zeroes before the AOD phase (the default --ratio).
SST_RATIO = 0.5


class NoOpPlugin:
    """Implements every hook and does nothing: what the hook machinery alone costs."""

    @hookimpl
    def toolbox_options(self) -> list:
        return []

    @hookimpl
    def toolbox_configure(self, options: Any) -> None:
        return None

    @hookimpl
    def toolbox_preflight_ratio(self) -> None:
        return None

    @hookimpl
    def toolbox_phases(self, step: int, num_steps: int) -> None:
        return None

    @hookimpl
    def toolbox_arrivals(self, labels: Any, num_shards: int, seed: int, per_class: Any, split: str) -> None:
        return None

    @hookimpl
    def toolbox_data_schedule(self, step: int, phase: str, shards: Any) -> None:
        return None

    @hookimpl
    def toolbox_phase_start(self, ctx: Any) -> None:
        return None

    @hookimpl
    def toolbox_model_surgery(self, ctx: Any, model: Any) -> None:
        return None

    @hookimpl
    def toolbox_epoch_start(self, ctx: Any) -> None:
        return None

    @hookimpl
    def toolbox_loss(self, ctx: Any, batch: Any, logits: Any) -> None:
        return None

    @hookimpl
    def toolbox_regularize(self, ctx: Any, model: Any) -> None:
        return None

    @hookimpl
    def toolbox_batch_end(self, ctx: Any, model: Any) -> None:
        return None

    @hookimpl
    def toolbox_epoch_end(self, ctx: Any, metrics: Any) -> None:
        return None

    @hookimpl
    def toolbox_phase_end(self, ctx: Any) -> None:
        return None

    @hookimpl
    def toolbox_state_dict(self, ctx: Any) -> None:
        return None

    @hookimpl
    def toolbox_load_state_dict(self, ctx: Any, state: Any) -> None:
        return None


# ----------------------------------------------------------------------------- loops
def plain_loop(model: nn.Module, precision: str, channels_last: bool) -> TrainFn:
    """A hand-written SGD loop: forward under autocast, cross-entropy, backward, step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def train(batches: Iterable[Batch]) -> None:
        for x, y in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(CPU, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return train


def sst_state(model: nn.Module, input_size: tuple[int, int, int], ratio: float = SST_RATIO) -> dict[str, torch.Tensor]:
    """Make ``model`` look as an SST phase leaves it: BN scales drawn from U(0.05, 1) (fixed seed),
    the ``ratio`` smallest (global ranking) set to exactly 0; return the masks (as sst writes them)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=generator) * 0.95 + 0.05)
    graph = ch.channel_groups(model, input_size)
    selection = bn_l1.select(model, graph, ratio)
    bn_l1.zero_chosen_(model, ch.selected_channels(graph, selection))
    return ch.selection_to_masks(model, graph, selection)


def engine_loop(model: nn.Module, data: ImageData, precision: str, channels_last: bool,
                plugins: list[str] | None = None, extra: list[Any] | None = None, phase: str = "learn",
                sst_teacher: bool = False, compact_teacher: bool = True) -> TrainFn:
    """The toolbox Trainer over the batches (one epoch per pass). With ``plugins`` the phase is
    set up as a run does at step 2: configure, a frozen teacher, ``toolbox_phase_start``, the
    ``toolbox_model_surgery`` chain (aod's re-initialization), then training. ``sst_teacher``: the model
    is first brought to the state SST leaves (:func:`sst_state`, masks set), so the teacher is the
    SST model; ``compact_teacher`` is the core option of that name."""
    names = plugins or []
    pm = load_plugins(names) if names else make_manager()
    for plugin in extra or []:
        pm.register(plugin)
    options = build_options({"plugins": names, "lr": 0.05, "precision": precision, "channels_last": channels_last,
                             "compact_teacher": compact_teacher}, declared_options(pm))
    calls.configure(pm, options)
    input_size = (data.in_chans, data.image_size, data.image_size)
    masks = sst_state(model, input_size) if sst_teacher else {}
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if names else None
    ctx = Context(options=options, model=model, device=CPU, step=2, num_steps=4, phase=phase, epochs=1,
                  num_classes=data.num_classes, input_size=input_size, teacher=teacher, masks=masks)
    state: dict[str, Any] = {}

    def train(batches: Iterable[Batch]) -> None:
        batches = [(x.contiguous(memory_format=torch.channels_last) if channels_last else x, y) for x, y in batches]
        if "optimizer" not in state:
            ctx.batches_per_epoch = len(batches)
            calls.phase_start(pm, ctx)
            ctx.model = model_surgery(pm, ctx, ctx.model)
            state["optimizer"] = ctx.optimizer = build_optimizer(ctx.model, options)
        Trainer(pm, ctx).train(state["optimizer"], lambda epoch: batches, len(batches))

    return train


# ----------------------------------------------------------------------------- measuring
def new_model(arch: str, data: ImageData, channels_last: bool) -> nn.Module:
    """A freshly seeded model in train mode."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=data.num_classes, in_chans=data.in_chans)
    return (model.to(memory_format=torch.channels_last) if channels_last else model).train()


def interleaved(entries: dict[str, tuple[TrainFn, Source]], count: int, batch_size: int, rounds: int,
                warmup: int = 3) -> dict[str, float]:
    """Median img/s of each entry (a train function and its batch source) over ``rounds`` rounds;
    every round times one pass of ``count`` full batches of each entry, in a rotating order, so
    that drifts of the shared machine hit all entries alike. Untimed warm-up first."""
    for train, source in entries.values():
        train(source(warmup))
    names = list(entries)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            train, source = entries[name]
            started = time.perf_counter()
            train(source(count))
            rates[name].append(count * batch_size / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def premade(batches: list[Batch]) -> Source:
    """Batches made before timing: the loop alone is measured."""
    return lambda k: batches[:k]


def live(make: Callable[[], Iterable[Batch]]) -> Source:
    """Batches drawn from a pipeline while timing: loading is part of the measurement."""
    return lambda k: itertools.islice(iter(make()), k)


def batch_pipeline(data: ImageData, batch_size: int) -> Callable[[], Iterable[Batch]]:
    """The toolbox's BatchLoader over the training set (a new epoch each call)."""
    loader = BatchLoader(data.train_x, data.train_y, None, batch_size, data.mean, data.std, train=True, seed=0)
    epoch = {"n": 0}

    def make() -> Iterable[Batch]:
        loader.set_epoch(epoch["n"])
        epoch["n"] += 1
        return loader

    return make


def pil_pipeline(data: ImageData, batch_size: int, workers: int) -> Callable[[], Iterable[Batch]]:
    """torchvision's PIL transforms through a DataLoader (persistent workers)."""
    loader = torch.utils.data.DataLoader(PilDataset(data), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0, drop_last=True)
    return lambda: loader


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a square matmul at ``dtype`` on the current threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def teacher_costs(arch: str, data: ImageData, batch: Batch, precision: str, repeats: int) -> dict[str, float]:
    """Milliseconds per batch (median of ``repeats`` interleaved rounds) of the SST teacher's
    forward (ctx.infer: no_grad, the student's autocast) four ways: the dense model as it is
    (``--compact-teacher false``), dense with BatchNorms folded, the compact copy, and the compact
    copy with BatchNorms folded (the default, via ctx.teacher_logits); the student's inference pass
    and training step; and the compact copy's MACs ratio."""
    model = new_model(arch, data, channels_last=True)
    input_size = (data.in_chans, data.image_size, data.image_size)
    options = build_options({"precision": precision, "channels_last": True}, {})
    x = batch[0].contiguous(memory_format=torch.channels_last)
    sst_model = copy.deepcopy(model)
    masks = sst_state(sst_model, input_size)
    sst_model.eval().requires_grad_(False)
    ctx = Context(options=options, model=model, device=CPU, teacher=sst_model, input_size=input_size, masks=masks)
    logits = ctx.teacher_logits(x)
    assert logits.grad_fn is None and not logits.requires_grad, "the teacher's logits carry a graph"
    compact, why = compact_teacher(sst_model, masks, input_size)
    assert compact is not None, f"the SST teacher was not compacted: {why}"
    dense_folded, why = inference_copy(sst_model, input_size)
    assert dense_folded is not None, f"the dense teacher's BatchNorms were not folded: {why}"
    macs_ratio = cost(compact, input_size)[0] / cost(sst_model, input_size)[0]
    student = copy.deepcopy(model).eval()
    step = plain_loop(model, precision, channels_last=True)

    def default() -> None:
        ctx.new_batch()
        ctx.teacher_logits(x)

    calls: dict[str, Callable[[], Any]] = {
        "teacher_dense_ms": lambda: ctx.infer(sst_model, x),
        "teacher_dense_folded_ms": lambda: ctx.infer(dense_folded, x),
        "teacher_compact_ms": lambda: ctx.infer(compact, x),
        "teacher_compact_folded_ms": default,
        "student_inference_ms": lambda: ctx.infer(student, x),
        "student_train_step_ms": lambda: step([batch]),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(1000 * (time.perf_counter() - started))
    return {**{name: statistics.median(values) for name, values in times.items()},
            "compact_teacher_macs_ratio": macs_ratio}


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a ``--preset`` sets defaults (explicit flags win); ``batch_sizes`` parsed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="defaults for a named setting: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    parser.add_argument("--arch", default="cifar_resnet20")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--batch-size", default="128", help="one batch size, or several comma-separated (128,256)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="side of the square matmul that measures the FLOP peak (bf16 is emulated, and slow, "
                             "on a CPU without AVX-512 BF16 / AMX)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"], help="of tables 1, 2 and 4")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--tables", default="1,2,3,4,5", help="which tables to run (comma-separated numbers)")
    parser.add_argument("--out", default="runs/throughput.json")
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(v) for v in str(args.batch_size).split(",") if v.strip()]
    except ValueError:
        parser.error(f"--batch-size takes whole numbers like 128 or 128,256, got {args.batch_size!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error(f"--batch-size takes positive whole numbers like 128 or 128,256, got {args.batch_size!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every table (once per batch size), print markdown, write the JSON record; return it
    (with several batch sizes: ``{"preset": ..., "runs": [one record per batch size]}``)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_root, download=False)
    records = [measure(args, data, bs) for bs in args.batch_sizes]
    record = records[0] if len(records) == 1 else {"preset": args.preset, "runs": records}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    return record


def measure(args: argparse.Namespace, data: ImageData, bs: int) -> dict[str, Any]:
    """Every table of ``args.tables`` at batch size ``bs``; print markdown, return the record."""
    tables = set(args.tables.split(","))
    loader = BatchLoader(data.train_x, data.train_y, None, bs, data.mean, data.std, train=True, seed=0)
    loader.set_epoch(0)
    batches = [b for _, b in zip(range(args.batches), loader)]
    n, p, r = len(batches), args.precision, args.repeats
    record: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{args.threads} threads", "arch": args.arch, "dataset": data.name,
        "batch_size": bs, "batches": n, "repeats": r, "precision": p}
    print(f"{record['machine']}; {args.arch} on {data.name}, batch {bs}, {n} batches x {r} repeats")

    def arch_model(channels_last: bool = True) -> nn.Module:
        return new_model(args.arch, data, channels_last)

    def speeds(entries: dict[str, TrainFn | tuple[TrainFn, Source]]) -> dict[str, float]:
        pairs = {k: v if isinstance(v, tuple) else (v, premade(batches)) for k, v in entries.items()}
        return interleaved(pairs, n, bs, r)

    table3: dict[str, float] = {}
    # 1. loops
    if "1" in tables:
        loops = {
            "plain loop": plain_loop(arch_model(), p, True),
            "engine, no plugins": engine_loop(arch_model(), data, p, True),
            "engine, no-op plugin (every hook)": engine_loop(arch_model(), data, p, True, extra=[NoOpPlugin()]),
            "engine, sst,aod,msl: AOD phase (compact SST teacher)": engine_loop(
                arch_model(), data, p, True, ["sst", "aod", "msl"], sst_teacher=True),
            "engine, sst,aod,msl: AOD phase (dense SST teacher)": engine_loop(
                arch_model(), data, p, True, ["sst", "aod", "msl"], sst_teacher=True, compact_teacher=False),
            "engine, sst,aod,msl: SST phase with MSL (teacher)": engine_loop(arch_model(), data, p, True,
                                                                             ["sst", "aod", "msl"], phase="sparsify"),
        }
        table1 = speeds(loops)
        record["loops"] = table1
        base = table1["plain loop"]
        print(f"\n### 1. Loops (channels_last, {p}, pre-made batches)\n\n| loop | img/s | / plain loop |\n|---|---:|---:|")
        for name, value in table1.items():
            print(f"| {name} | {value:.0f} | {value / base:.3f} |")
        noop = table1["engine, no-op plugin (every hook)"] / table1["engine, no plugins"]
        print(f"\nhook machinery (no-op plugin / no plugins): {noop:.3f}")
        record["hook_ratio"] = noop
        gain = (table1["engine, sst,aod,msl: AOD phase (compact SST teacher)"]
                / table1["engine, sst,aod,msl: AOD phase (dense SST teacher)"])
        print(f"AOD phase, compact / dense SST teacher: {gain:.3f}")
        record["compact_teacher_gain"] = gain

    # 2. pipelines end to end
    if "2" in tables:
        pipelines = {
            "pre-made batches (no loading)": premade(batches),
            "BatchLoader, live": live(batch_pipeline(data, bs)),
            "torchvision PIL DataLoader, 0 workers": live(pil_pipeline(data, bs, 0)),
            "torchvision PIL DataLoader, 2 workers": live(pil_pipeline(data, bs, 2)),
        }
        table2 = speeds({name: (plain_loop(arch_model(), p, True), source) for name, source in pipelines.items()})
        record["pipelines"] = table2
        ours = table2["BatchLoader, live"]
        print(f"\n### 2. Data pipeline end to end (plain loop, channels_last, {p})\n\n"
              "| pipeline | img/s | BatchLoader / this |\n|---|---:|---:|")
        for name, value in table2.items():
            print(f"| {name} | {value:.0f} | {ours / value:.2f} |")

    # 3. settings
    if "3" in tables:
        settings: dict[str, TrainFn | tuple[TrainFn, Source]] = {}
        for channels_last in (False, True):
            for precision in ("fp32", "bf16"):
                layout = "channels_last" if channels_last else "NCHW"
                settings[f"plain loop, {layout}, {precision}"] = plain_loop(arch_model(channels_last), precision,
                                                                            channels_last)
                settings[f"engine, {layout}, {precision}"] = engine_loop(arch_model(channels_last), data, precision,
                                                                         channels_last)
        table3 = speeds(settings)
        torch.set_num_threads(1)
        table3[f"plain loop, channels_last, {p}, 1 thread"] = speeds({"1": plain_loop(arch_model(), p, True)})["1"]
        torch.set_num_threads(args.threads)
        record["settings"] = table3
        record["compile"] = {}
        if not args.no_compile:
            for precision in ("fp32", "bf16"):
                model = arch_model()
                started = time.perf_counter()
                try:
                    compiled = torch.compile(model)
                    train = plain_loop(compiled, precision, True)
                    train(batches[:2])
                    seconds = time.perf_counter() - started
                    table3[f"plain loop, channels_last, {precision}, torch.compile"] = speeds({"c": train})["c"]
                    record["compile"][precision] = {"compile_seconds": seconds}
                except Exception as exc:  # noqa: BLE001 (a compiler failure is a result to record)
                    record["compile"][precision] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        print("\n### 3. Settings (pre-made batches)\n\n| setting | img/s |\n|---|---:|")
        for name, value in table3.items():
            print(f"| {name} | {value:.0f} |")
        for precision, info in record["compile"].items():
            print(f"torch.compile {precision}: {info}")

    # 4. teacher
    if "4" in tables:
        record["teacher"] = t = teacher_costs(args.arch, data, batches[0], p, max(r, 5))
        dense, macs = t["teacher_dense_ms"], t["compact_teacher_macs_ratio"]
        print(f"\n### 4. SST teacher forward (r = {SST_RATIO}; {p}, channels_last), ms per batch of {bs}\n\n"
              "| forward | ms | / dense teacher |\n|---|---:|---:|")
        for key, name in (("teacher_dense_ms", "dense teacher as it is (--compact-teacher false)"),
                          ("teacher_dense_folded_ms", "dense, BatchNorms folded"),
                          ("teacher_compact_ms", "compact copy"),
                          ("teacher_compact_folded_ms", "compact copy, BatchNorms folded (default)"),
                          ("student_inference_ms", "student inference pass"),
                          ("student_train_step_ms", "student training step")):
            print(f"| {name} | {t[key]:.1f} | {t[key] / dense:.2f} |")
        print(f"\ncompact MACs ratio {macs:.3f}; default teacher / dense = {t['teacher_compact_folded_ms'] / dense:.2f}"
              f" = {t['teacher_compact_folded_ms'] / dense / macs:.2f} x the MACs ratio")

    # 5. FLOP peak
    if "5" in tables:
        macs = count_macs(arch_model(), (data.in_chans, data.image_size, data.image_size))
        peaks = {dtype: matmul_peak(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype]), args.peak_size)
                 for dtype in ("fp32", "bf16")}
        record["flops"] = {"macs_per_image": macs, "matmul_peak_gflops": peaks, "fraction": {}}
        print(f"\n### 5. Fraction of the matmul peak (training = 6 x {macs / 1e6:.1f} MMACs per image)\n\n"
              "| setting | img/s | achieved GFLOP/s | matmul peak GFLOP/s | fraction |\n|---|---:|---:|---:|---:|")
        for precision in ("fp32", "bf16"):
            key = f"plain loop, channels_last, {precision}"
            rate = table3[key] if key in table3 else speeds({key: plain_loop(arch_model(), precision, True)})[key]
            achieved = rate * 6 * macs / 1e9
            record["flops"]["fraction"][precision] = achieved / peaks[precision]
            print(f"| plain loop, channels_last, {precision} | {rate:.0f} | {achieved:.1f} | {peaks[precision]:.0f} | "
                  f"{achieved / peaks[precision]:.1%} |")
    return record


if __name__ == "__main__":
    main()
