"""Inference speed of a served model: PyTorch eager vs ONNX Runtime, dense vs compact, and the
HTTP endpoint's requests/s and latency.

    python benchmarks/inference.py [--archs cifar_resnet20,cifar_resnet56] [--ratio 0.5]
                                   [--threads 2] [--rounds 5] [--requests 200] [--out FILE.md]

For every backbone (randomly initialized, BN scales from U(0.05, 1) as in ``benchmarks/compact.py``)
the dense model and its compact copy at ratio r (the r smallest-|gamma| filters zeroed, then
removed by :func:`toolbox.pruning.compaction.compact`, exact) run in PyTorch eager (fp32, NCHW,
``torch.no_grad``) and as the ONNX file ``toolbox export`` writes, in ONNX Runtime (CPU provider,
all graph optimizations, pool threads not spinning between runs). Images/s at batch 1 and 64: every configuration is timed once per
round (rotating order, after a warm-up), ``--rounds`` rounds, the median reported; so load from
other processes hits all configurations alike. Then ``toolbox serve`` runs in a subprocess over a
run directory holding the dense cifar_resnet20, and ``--requests`` POST /predict of one 32 x 32 PNG
each are sent over one keep-alive connection (sequential) and from 4 threads: requests/s, p50, p99.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compact import INPUT, masked_model, random_model  # noqa: E402

from toolbox.deploy.export import onnx_bytes  # noqa: E402
from toolbox.pruning.compaction import compact  # noqa: E402
from toolbox.run.serve_files import serve_checkpoint  # noqa: E402
from toolbox.storage.checkpoint import save_checkpoint  # noqa: E402

BATCHES = (1, 64)
IMAGES_PER_PASS = {1: 32, 64: 128}


def runners(arch: str, ratio: float, threads: int) -> dict[tuple[str, str, str], object]:
    """``{(arch, "dense"|"compact", "eager"|"onnx"): f(x: np.ndarray) -> logits}``."""
    import onnxruntime as ort

    dense = random_model(arch)
    masked, masks = masked_model(dense, ratio)
    small, _ = compact(masked, masks=masks, example_inputs=torch.zeros(1, *INPUT))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads spin after each run by default: on 2 shared cores that steals the CPU from
    # the next (eager) configuration of the interleaved rounds
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    out = {}
    for kind, model in (("dense", dense.eval()), ("compact", small.eval())):
        def eager(x: np.ndarray, model: torch.nn.Module = model) -> object:
            with torch.no_grad():
                return model(torch.from_numpy(x))
        session = ort.InferenceSession(onnx_bytes(model, torch.zeros(2, *INPUT), {}), options,
                                       providers=["CPUExecutionProvider"])
        out[(arch, kind, "eager")] = eager
        out[(arch, kind, "onnx")] = lambda x, s=session: s.run(None, {"images": x})
    return out


def images_per_second(configs: dict, rounds: int) -> dict[tuple, float]:
    """Median images/s of every (config, batch), timed in interleaved rounds (rotating order)."""
    inputs = {b: np.random.default_rng(0).standard_normal((b, *INPUT), dtype=np.float32) for b in BATCHES}
    jobs = [(key, b) for key in configs for b in BATCHES]
    for key, b in jobs:  # warm-up
        configs[key](inputs[b])
    samples: dict[tuple, list[float]] = {job: [] for job in jobs}
    for r in range(rounds):
        for key, b in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
            passes = IMAGES_PER_PASS[b] // b
            start = time.perf_counter()
            for _ in range(passes):
                configs[key](inputs[b])
            samples[(key, b)].append(passes * b / (time.perf_counter() - start))
    return {job: statistics.median(v) for job, v in samples.items()}


def png(seed: int = 0) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def served_run(folder: Path) -> Path:
    """A run directory whose ``serve/step1.pt`` is a dense cifar_resnet20 on 10 classes."""
    data = serve_checkpoint(random_model("cifar_resnet20"), None, compacted=False, arch="cifar_resnet20",
                            num_classes=10, in_chans=3, model_kwargs={}, step=1, phase="learn",
                            input_size=INPUT, classes=[f"c{i}" for i in range(10)],
                            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_checkpoint(folder / "serve" / "step1.pt", data)
    return folder


def http_load(run: Path, requests: int, threads: int) -> list[tuple[str, float, float, float]]:
    """(client, requests/s, p50 ms, p99 ms) of POST /predict against ``toolbox serve`` on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "toolbox.cli", "serve", str(run), "--port", str(port),
                               "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n".encode()
            + png() + f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def client(count: int, latencies: list[float]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(count):
            start = time.perf_counter()
            connection.request("POST", "/predict", body, headers)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            latencies.append((time.perf_counter() - start) * 1e3)
        connection.close()

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client(5, [])  # up, and warmed
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("toolbox serve did not start") from None
                time.sleep(0.3)
        rows = []
        for clients in (1, 4):
            latencies: list[float] = []
            workers = [threading.Thread(target=client, args=(requests // clients, latencies)) for _ in range(clients)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=300)
            elapsed = time.perf_counter() - start
            cut = np.percentile(latencies, [50, 99])
            rows.append((f"{clients} client{'s' if clients > 1 else ''}", len(latencies) / elapsed, float(cut[0]), float(cut[1])))
        return rows
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="cifar_resnet20,cifar_resnet56")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    load = os.getloadavg()[0]
    configs: dict = {}
    for arch in args.archs.split(","):
        configs.update(runners(arch, args.ratio, args.threads))
    speed = images_per_second(configs, args.rounds)
    lines = [f"Machine: {platform.machine()} CPU, {args.threads} threads, torch {torch.__version__}, "
             f"onnxruntime {__import__('onnxruntime').__version__}, CPython {platform.python_version()}; "
             f"load average at start {load:.2f}.", "",
             "| model | r | runtime | b1 img/s | b64 img/s | b64 / dense eager b64 |", "|---|---|---|---:|---:|---:|"]
    for arch, kind, runtime in configs:
        base = speed[((arch, "dense", "eager"), 64)]
        lines.append(f"| {arch} | {args.ratio if kind == 'compact' else 0} | {runtime} "
                     f"| {speed[((arch, kind, runtime), 1)]:.0f} | {speed[((arch, kind, runtime), 64)]:.0f} "
                     f"| {speed[((arch, kind, runtime), 64)] / base:.2f} |")
    with TemporaryDirectory() as tmp:
        rows = http_load(served_run(Path(tmp)), args.requests, args.threads)
    lines += ["", "| POST /predict (cifar_resnet20 dense, one 32x32 PNG, loopback) | requests/s | p50 ms | p99 ms |",
              "|---|---:|---:|---:|"]
    lines += [f"| {name} | {rps:.0f} | {p50:.1f} | {p99:.1f} |" for name, rps, p50, p99 in rows]
    lines += ["", f"({time.perf_counter() - began:.0f} s, load average at end {os.getloadavg()[0]:.2f})"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
