"""Files a run writes: atomic writes, one-write appends, and the test kill points.

Every file a run writes goes through :func:`atomic_write_bytes` (temp file in the same folder,
fsync, rename, fsync of the folder): a kill or a full disk leaves either the old file or the new
one, never a torn one, and a failed write removes its temp file and raises :class:`WriteError`
with one sentence. ``metrics.jsonl`` is the one append-only file (:func:`append_line`); a torn
last line is dropped on resume (:mod:`toolbox.run.resume`).

Test hook: :func:`kill_point` SIGKILLs the process at a named moment when the environment
variable ``TOOLBOX_TEST_KILL_AT`` names it (``before-rename:<file name>``,
``after-write:<file name>``, ``batch:<step>:<phase>:<epoch>:<batch>``); the kill-and-resume tests
use it to stop a run at exact points. In a multi-process (torchrun) run ``TOOLBOX_TEST_KILL_RANK``
names the one rank that kills itself (default: every rank that reaches the event; only rank 0
writes files). Unset, it costs one dictionary lookup per file written.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

KILL_ENV = "TOOLBOX_TEST_KILL_AT"
KILL_RANK_ENV = "TOOLBOX_TEST_KILL_RANK"
TEMP_SUFFIX = ".tmp"
#: Every temp file the toolbox writes is ``.<name>.toolbox-<random>.tmp``; cleanup removes only those.
TEMP_MARK = ".toolbox-"


def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp alone would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


class WriteError(OSError):
    """A file of the run could not be written (full disk, permissions); one sentence, old file intact."""


def kill_point(event: str) -> None:
    """Test hook: SIGKILL this process when ``$TOOLBOX_TEST_KILL_AT`` equals ``event``.

    Lets tests kill a run at an exact moment (between writing a temp file and renaming it, at a
    given batch) and check that ``--resume`` loses nothing. Does nothing when the variable is unset.
    With ``$TOOLBOX_TEST_KILL_RANK`` set, only the process whose ``$RANK`` (torchrun) equals it dies.
    """
    if os.environ.get(KILL_ENV) == event:
        target = os.environ.get(KILL_RANK_ENV)
        if target is None or target == os.environ.get("RANK", "0"):
            os.kill(os.getpid(), signal.SIGKILL)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[: 1 << 24])
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(path: Path, exc: OSError) -> WriteError:
    """The one-sentence :class:`WriteError` for a failed write of ``path``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = ("free some disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "check the folder's permissions and free space")
    error = WriteError(f"Could not write {path} ({reason}); what was written before is intact: "
                       f"{hint}, then continue the run with `toolbox run --resume <run dir>`.")
    error.errno = exc.errno
    return error


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill leaves either the old file or the new one.

    The bytes go to a temp file beside ``path`` (``.<name>.toolbox-<random>.tmp``), are fsynced, and the
    temp file is renamed over ``path``. A failure (e.g. ENOSPC) removes the temp file and raises
    :class:`WriteError` (an ``OSError``) naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            with contextlib.suppress(OSError):
                os.fchmod(fd, FILE_MODE)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        kill_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise write_error(path, exc) from None
        raise
    _fsync_dir(path.parent)
    kill_point(f"after-write:{path.name}")


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` with one ``O_APPEND`` write.

    A kill can at worst leave a torn last line, which the reader drops (``metrics.jsonl`` on
    resume); a failure (e.g. ENOSPC) raises :class:`WriteError`.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            _write_all(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files a killed :func:`atomic_write_bytes` left in ``folder`` (only those: a
    user's own ``.something.tmp`` stays); return them."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_MARK}*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_savefig(fig: Any, path: Path, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (rendered in memory, then :func:`atomic_write_bytes`)."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic write of a text file (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf) replaced by ``None``, so that the JSON
    written is strict (``NaN`` is not JSON: strict parsers reject the file)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: strict_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(value) for value in data]
    return data


def json_text(data: Any, **kwargs: Any) -> str:
    """``data`` as strict JSON text (non-finite floats as ``null``)."""
    return json.dumps(strict_json(data), allow_nan=False, **kwargs)


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomic write of a strict JSON file (non-finite floats as ``null``)."""
    atomic_write_text(path, json_text(data, indent=2, sort_keys=False) + "\n")
