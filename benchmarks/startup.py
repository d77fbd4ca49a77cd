"""Start-up time of the ``toolbox`` command: each command in a fresh interpreter, interleaved over
rounds, median wall seconds and median CPU seconds (user + sys of the child alone).

    python benchmarks/startup.py [--rounds 7] [--tree .] [--command="plugins show sst" ...]

The CPU time is the child's own (``os.wait4``), so it barely moves when other processes share
the cores, while the wall time grows with the load: on a busy machine read the CPU column, on an
idle one they agree. Commands run round-robin (every command once per round), so a change in
load hits all of them alike. ``--tree`` goes first on PYTHONPATH (a checkout holding toolbox/).
Goal (issue): ``toolbox --help`` and ``toolbox run --help`` under 1 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("--help", "run --help", "plugins list")


def time_once(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + sys) of ``python -m toolbox.cli ARGS`` in a fresh process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "toolbox.cli", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"toolbox {' '.join(args)} exited with {child.returncode}; run it by hand to see why.")
    return wall, usage.ru_utime + usage.ru_stime


def measure(commands: list[str], rounds: int, env: dict[str, str]) -> dict[str, list[tuple[float, float]]]:
    """Every command once per round (after one untimed warm-up round that fills the file cache)."""
    times: dict[str, list[tuple[float, float]]] = {command: [] for command in commands}
    for index in range(rounds + 1):
        for command in commands:
            sample = time_once(command.split(), env)
            if index:
                times[command].append(sample)
    return times


def table(times: dict[str, list[tuple[float, float]]]) -> str:
    """A markdown table: median wall, median CPU and fastest wall per command."""
    lines = ["| command | median wall (s) | median CPU user+sys (s) | fastest wall (s) |", "|---|---:|---:|---:|"]
    for command, samples in times.items():
        walls, cpus = [w for w, _ in samples], [c for _, c in samples]
        lines.append(f"| `toolbox {command}` | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} | "
                     f"{min(walls):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, measure, print the table and the load."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (each command once per round)")
    parser.add_argument("--tree", type=Path, default=Path("."), help="checkout to put first on PYTHONPATH")
    parser.add_argument("--command", action="append", help="toolbox arguments to time instead of the default three "
                        "(repeatable)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}.")
    tree = args.tree.resolve()
    if not (tree / "toolbox").is_dir():
        parser.error(f"--tree {args.tree} holds no toolbox/ folder; pass a checkout of the project.")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    before = os.getloadavg()[0]
    times = measure(args.command or list(COMMANDS), args.rounds, env)
    print(table(times))
    print(f"\n{args.rounds} rounds, {os.cpu_count()} cores, load average {before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; python {sys.version.split()[0]}; tree {tree}")


if __name__ == "__main__":
    main()
