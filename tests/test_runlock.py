"""One writer per run directory: the lock file, a second process refused, a stale lock taken over."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.run import lock as runlock

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--arch", "cifar_resnet20", "--steps", "1", "--epochs", "1", "--batch-size", "64",
        "--device", "cpu", "--threads", "1"]
HOLD = ("import sys, time; from toolbox.run import lock as runlock; runlock.acquire(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)")


@contextlib.contextmanager
def held_elsewhere(run_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of ``run_dir`` for the duration of the block."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def ended_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_file_names_the_owner_and_goes_on_release(tmp_path: Path) -> None:
    runlock.acquire(tmp_path / "run")
    assert runlock.lock_path(tmp_path / "run").read_text().strip() == str(os.getpid())
    runlock.acquire(tmp_path / "run")  # re-entrant within a process
    runlock.release(tmp_path / "run")
    assert runlock.lock_path(tmp_path / "run").exists()
    runlock.release(tmp_path / "run")
    assert not runlock.lock_path(tmp_path / "run").exists()


def test_a_collected_owner_releases_only_its_own_hold(tmp_path: Path) -> None:
    class Owner:
        pass

    old, new = Owner(), Owner()
    runlock.hold(old, tmp_path)
    runlock.release_all()  # e.g. the end of a CLI command, while `old` still lives
    runlock.hold(new, tmp_path)
    del old  # collected later: must not release `new`'s lock
    assert runlock.lock_path(tmp_path).exists()
    del new
    assert not runlock.lock_path(tmp_path).exists()


def test_a_second_process_is_refused_with_the_owner_pid(tmp_path: Path) -> None:
    with held_elsewhere(tmp_path) as other:
        with pytest.raises(runlock.RunLockedError, match=f"in use by process {other.pid} "):
            runlock.acquire(tmp_path)
    runlock.acquire(tmp_path)  # free again once the other process is gone
    runlock.release(tmp_path)


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = ended_pid()
    runlock.lock_path(tmp_path).write_text(f"{dead}\n")
    with caplog.at_level("WARNING", logger="toolbox"), runlock.locked(tmp_path):
        assert runlock.lock_path(tmp_path).read_text().strip() == str(os.getpid())
    assert f"left by process {dead}, which has ended" in caplog.text


def test_a_lock_of_a_killed_process_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with held_elsewhere(tmp_path) as other:
        pass  # killed with SIGKILL: its lock file stays, its flock goes
    assert runlock.lock_path(tmp_path).read_text().strip() == str(other.pid)
    with caplog.at_level("WARNING", logger="toolbox"), runlock.locked(tmp_path):
        pass
    assert f"left by process {other.pid}" in caplog.text


def test_a_forked_child_never_releases_the_parents_lock(tmp_path: Path) -> None:
    with runlock.locked(tmp_path):
        child = os.fork()
        if child == 0:
            runlock.release_all()
            os._exit(0)
        os.waitpid(child, 0)
        assert runlock.lock_path(tmp_path).read_text().strip() == str(os.getpid())
        refused = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode != 0 and f"in use by process {os.getpid()}" in refused.stderr


def test_cli_resume_and_out_on_a_locked_run_directory_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", "--out", str(out), *TINY]).exit_code == 0
    assert not runlock.lock_path(out).exists()  # released when the command ended
    metrics = (out / "metrics.jsonl").read_text()
    with held_elsewhere(out) as other:
        for args in (["run", "--resume", str(out)], ["run", "--out", str(out), *TINY]):
            result = runner.invoke(app, args)
            assert result.exit_code == 2, result.output
            assert f"The run directory {out} is in use by process {other.pid}" in result.output
    assert (out / "metrics.jsonl").read_text() == metrics


def test_cli_refuses_a_resume_while_the_run_trains(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--out", str(out), *TINY, "--steps", "3", "--epochs", "20"]
    training = subprocess.Popen([sys.executable, "-m", "toolbox.cli", "run", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").exists() and training.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert training.poll() is None, "the training run ended before the test could resume it"
        result = runner.invoke(app, ["run", "--resume", str(out)])
        assert result.exit_code == 2, result.output
        assert f"in use by process {training.pid}" in result.output
    finally:
        training.kill()
        training.wait()
    assert runlock.lock_path(out).read_text().strip() == str(training.pid)  # a later run takes it over
