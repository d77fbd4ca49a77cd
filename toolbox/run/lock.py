"""One writer per run directory: an exclusive ``flock`` on ``RUN_DIR/run.lock``, which holds the
owner's pid.

A second process that opens the same run directory for writing (``toolbox run --resume``,
``toolbox run --out``) is refused with one sentence naming the pid. The kernel drops the lock
when its process dies, so a lock file left by a killed run is taken over, with a warning naming
the dead process. Within one process the lock is re-entrant (counted): the CLI and tests may
open one run directory several times; it is released when the last holder lets go (or the
process ends). Processes forked while a lock is held (e.g. image decoders) never own it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import weakref
from pathlib import Path

from toolbox.errors import UsageError

LOCK_NAME = "run.lock"

log = logging.getLogger("toolbox")

#: Locks this process holds: resolved run directory -> (file descriptor, hold count).
_held: dict[Path, tuple[int, int]] = {}
#: The pending releases of :func:`hold`, per run directory (cancelled when the lock goes).
_finalizers: dict[Path, list[weakref.finalize]] = {}


class RunLockedError(UsageError):
    """The run directory is being written by another live process."""


def lock_path(run_dir: str | os.PathLike[str]) -> Path:
    """The lock file of ``run_dir``."""
    return Path(run_dir) / LOCK_NAME


def acquire(run_dir: str | os.PathLike[str]) -> None:
    """Hold the lock of ``run_dir`` (created if missing), or raise :class:`RunLockedError`.

    Re-entrant within a process: every ``acquire`` needs one :func:`release`.
    """
    key = Path(run_dir).resolve()
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return
    created = not key.exists()
    try:
        key.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Cannot write the run directory {run_dir} ({exc.strerror}); pass a writable --out.") from None
    fd = _lock_file(key, run_dir)
    previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
    if previous and previous != str(os.getpid()):
        log.warning("Took over the lock of %s left by process %s, which has ended (killed?); this process "
                    "(%d) now writes the run directory.", run_dir, previous, os.getpid())
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        with contextlib.suppress(OSError):  # no empty lock (nor a new, empty run directory) is left
            os.unlink(lock_path(key))
            if created:
                key.rmdir()
        os.close(fd)
        raise UsageError(f"Cannot write the run directory {run_dir} (its lock file: {exc.strerror or exc}); free "
                         "some space or pass a writable --out.") from None
    _held[key] = (fd, 1)


def _lock_file(key: Path, run_dir: str | os.PathLike[str]) -> int:
    """Open and ``flock`` ``key/run.lock``: a file descriptor on the file that is at the path now
    (one deleted by its releasing owner meanwhile is opened again)."""
    path = lock_path(key)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise UsageError(f"Cannot write the run directory {run_dir} (its lock file: {exc.strerror}); pass a writable --out.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"The run directory {run_dir} is in use by process {owner} (lock file {path}); wait until it "
                "finishes or stop it, then try again.") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)  # the owner removed the file between our open and our lock: try the new one


def release(run_dir: str | os.PathLike[str]) -> None:
    """Let go of one hold of ``run_dir``'s lock; the last one deletes the lock file and unlocks."""
    key = Path(run_dir).resolve()
    if key not in _held:
        return
    fd, count = _held.pop(key)
    if count > 1:
        _held[key] = (fd, count - 1)
        return
    for pending in _finalizers.pop(key, []):  # an owner collected later must not release a new lock
        pending.detach()
    with contextlib.suppress(OSError):
        os.unlink(lock_path(key))
    os.close(fd)


def hold(owner: object, run_dir: str | os.PathLike[str]) -> None:
    """:func:`acquire` the lock of ``run_dir`` for as long as ``owner`` lives (e.g. a Run)."""
    acquire(run_dir)
    _finalizers.setdefault(Path(run_dir).resolve(), []).append(weakref.finalize(owner, release, run_dir))


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    """Hold the lock of ``run_dir`` inside a ``with`` block."""
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


def release_all() -> None:
    """Release every lock this process holds (at the end of a CLI command and at exit)."""
    for key in list(_held):
        _held[key] = (_held[key][0], 1)
        release(key)


def _forget_in_child() -> None:
    """In a forked child: close the inherited descriptors without unlocking (the parent keeps
    the locks) and forget them, so the child never releases or deletes the parent's lock."""
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()
    for pending in [f for group in _finalizers.values() for f in group]:
        pending.detach()
    _finalizers.clear()


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(release_all)
