"""A decoded-image cache: decode a list of image files once, in parallel, into a uint8 ``.npy``
file that later runs memory-map (seconds to open, flat memory however large the set).

A cache entry is four files in the cache folder: ``<name>.images.npy`` (N x C x S x S uint8),
``<name>.labels.npy`` (int64), ``<name>.digests.npy`` (every listed file's content hash, BLAKE2b
of its bytes, taken in the same single read that decodes it) and ``<name>.json``, the key file,
written last. The key is a hash of every file's path, label, size, modification time, inode and
status-change time plus the image size and channel setting, so an added, removed, touched,
replaced (even by a file of the same size and modification time) or relabelled file makes the
entry stale and it is rebuilt. A decode failure is never trusted: on every load the files an
entry left out are tried again, and the entry is rebuilt when one of them now decodes. Before
a rebuild the key file is deleted, and every file is written to a temp file and renamed into
place, so a kill at any moment leaves either no trusted entry or a complete one. One process
builds an entry at a time (a lock file beside it); the others wait and then read it. A rebuild
renames new files over the old ones, so a running process keeps its map of the old file; never
truncate or edit a cache file in place while a run maps it (delete it instead).

The cache folder is ``$TOOLBOX_CACHE_DIR`` when set, else ``.toolbox-cache`` beside the image
folder when that is writable, else ``~/.cache/toolbox/decoded``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import threading
import time
from array import array
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from toolbox.data.decode_progress import DecodeProgress
from toolbox.data.image_decode import DIGEST_BYTES, DecodedChunk, decode_chunk, native_channels
from toolbox.errors import UsageError
from toolbox.storage import atomic as tbio

#: Environment variable naming the cache folder (overrides the default places).
CACHE_ENV = "TOOLBOX_CACHE_DIR"
#: Environment variable setting the number of decoding processes (default: the usable cores).
WORKERS_ENV = "TOOLBOX_DECODE_WORKERS"
#: Folder created beside an image folder for its caches.
CACHE_DIRNAME = ".toolbox-cache"
#: Bumped whenever the decoding or the file layout changes (old entries are then rebuilt).
FORMAT = 2
TEMP_MARK = ".tmp"

log = logging.getLogger("toolbox")


@dataclass
class FileList:
    """The source images as columns (compact: about 100 bytes a file, for millions of files):
    path, class label, and the size, mtime, inode and ctime that key the cache (what identifies
    a file's content without reading it)."""

    paths: list[str] = field(default_factory=list)
    labels: array = field(default_factory=lambda: array("q"))
    sizes: array = field(default_factory=lambda: array("q"))
    mtimes_ns: array = field(default_factory=lambda: array("q"))
    inodes: array = field(default_factory=lambda: array("Q"))
    ctimes_ns: array = field(default_factory=lambda: array("q"))

    def add(self, path: str, label: int, size: int, mtime_ns: int, inode: int = 0, ctime_ns: int = 0) -> None:
        """Append one file."""
        self.paths.append(path)
        self.labels.append(label)
        self.sizes.append(size)
        self.mtimes_ns.append(mtime_ns)
        self.inodes.append(inode)
        self.ctimes_ns.append(ctime_ns)

    def add_stat(self, path: str, label: int, stat: os.stat_result) -> None:
        """Append one file, keyed by its ``os.stat`` result."""
        self.add(path, label, stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)

    def extend(self, other: "FileList") -> None:
        """Append every file of ``other``."""
        self.paths += other.paths
        self.labels += other.labels
        self.sizes += other.sizes
        self.mtimes_ns += other.mtimes_ns
        self.inodes += other.inodes
        self.ctimes_ns += other.ctimes_ns

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DecodedSet:
    """A cache entry opened for reading: ``images`` is a copy-on-write memory map (pages are
    read from the file on demand and never count as the process's own memory), ``labels`` an
    in-memory array, ``skipped`` the ``(position, path, reason)`` of every file left out,
    ``digests`` (one row of :data:`DIGEST_BYTES` per listed file, zeros where unreadable) the
    files' content hashes."""

    images: np.ndarray
    labels: np.ndarray
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    path: Path = Path()
    built: bool = False
    digests: np.ndarray = field(default_factory=lambda: np.zeros((0, DIGEST_BYTES), np.uint8))


def cache_folder(beside: Path) -> Path:
    """Where the caches of the image folder ``beside`` live (see the module docstring)."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    local = Path(beside).resolve().parent / CACHE_DIRNAME
    if _writable(local):
        return local
    return Path.home() / ".cache" / "toolbox" / "decoded"


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe{os.getpid()}{TEMP_MARK}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def content_key(files: FileList, size: int, channels: int | None) -> str:
    """Hash of everything that determines the decoded arrays (``channels`` None = chosen by
    majority)."""
    digest = hashlib.sha256(f"toolbox-decoded/{FORMAT}|{size}|{channels or 'auto'}\n".encode())
    for path, label, size_bytes, mtime, inode, ctime in zip(files.paths, files.labels, files.sizes,
                                                           files.mtimes_ns, files.inodes, files.ctimes_ns):
        digest.update(f"{path}\0{label}\0{size_bytes}\0{mtime}\0{inode}\0{ctime}\n".encode())
    return digest.hexdigest()


def decode_workers() -> int:
    """Decoding processes: ``$TOOLBOX_DECODE_WORKERS`` or the cores this process may use."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def load_decoded(files: FileList, size: int, channels: int | None, skip_bad: bool,
                 folder: Path, name: str, what: str, workers: int | None = None) -> DecodedSet:
    """The decoded images of ``files`` from the cache entry ``folder/name``, built first when it
    is missing or stale.

    ``channels`` is 1, 3 or ``None`` (what most files are). A file that cannot be decoded is a
    :class:`UsageError` naming it, or with ``skip_bad`` is left out and listed in
    ``DecodedSet.skipped``. ``what`` names the images in messages (e.g. "training images in DIR").
    """
    key = content_key(files, size, channels)
    entry = folder / name
    with _build_lock(entry):
        opened = _open(entry, key)
        if opened is not None and not _decodes_now(opened, size):
            return _with_skip_policy(opened, skip_bad, what)
        try:
            _remove(_key_path(entry))  # from here on a kill never leaves a trusted stale entry
            _remove_temp_files(entry)
            built = _build(files, size, channels, entry, key, what, workers or decode_workers())
        except OSError as exc:  # reading the images never raises: these are the cache's writes
            raise tbio.WriteError(f"Could not write the decoded cache {entry} ({exc.strerror or exc}); free "
                                  f"some disk space or set {CACHE_ENV} to a folder with room.") from None
    return _with_skip_policy(built, skip_bad, what)


def _with_skip_policy(decoded: DecodedSet, skip_bad: bool, what: str) -> DecodedSet:
    """``decoded``, or the one-sentence error for its first bad file when bad files are not skipped."""
    if decoded.skipped and not skip_bad:
        _, path, reason = decoded.skipped[0]
        more = len(decoded.skipped) - 1
        others = f" (and {more} more unreadable image{'s' if more > 1 else ''} among the {what})" if more else ""
        raise UsageError(f"Image {path} could not be decoded ({reason}){others}; fix or remove it, "
                         "or pass --skip-bad-images to leave unreadable images out.")
    return decoded


def _decodes_now(decoded: DecodedSet, size: int) -> bool:
    """Whether a file the entry left out decodes now (its failure was transient: a permission
    fixed, a copy finished); then the entry must be rebuilt."""
    if not decoded.skipped:
        return False
    retried = decode_chunk([path for _, path, _ in decoded.skipped], size, decoded.channels)
    if retried.kept:
        log.info("%d image(s) the decoded cache %s left out decode now; decoding again.", len(retried.kept),
                 decoded.path)
    return bool(retried.kept)


@contextlib.contextmanager
def _build_lock(entry: Path) -> Iterator[None]:
    """Hold ``<entry>.lock`` (waiting, with a message, while another process builds the entry)."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(entry.with_name(entry.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise tbio.WriteError(f"Could not create the decoded cache's lock file in {entry.parent} "
                              f"({exc.strerror or exc}); set {CACHE_ENV} to a writable folder.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another process that is decoding into %s.", entry)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open(entry: Path, key: str) -> DecodedSet | None:
    """The entry when its key file matches ``key`` and its arrays agree with it, else ``None``."""
    meta_path = _key_path(entry)
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        images = np.load(_images_path(entry), mmap_mode="c" if meta["shape"][0] else None)
        labels = np.load(_labels_path(entry))
        digests = np.load(_digests_path(entry))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:  # JSONDecodeError is a ValueError
        log.warning("Ignoring the damaged decoded cache %s (%s); decoding again.", entry, exc)
        return None
    if (list(images.shape) != meta["shape"] or images.dtype != np.uint8 or labels.shape != (images.shape[0],)
            or digests.shape != (images.shape[0] + len(meta["skipped"]), DIGEST_BYTES)):
        log.warning("Ignoring the decoded cache %s: its arrays do not match its key file; decoding again.", entry)
        return None
    return DecodedSet(images=images, labels=labels.astype(np.int64, copy=False), channels=int(meta["channels"]),
                      mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                      skipped=[(int(i), str(p), str(r)) for i, p, r in meta["skipped"]], path=entry,
                      digests=digests)


def _key_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".json")


def _images_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".images.npy")


def _labels_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".labels.npy")


def _digests_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".digests.npy")


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_temp_files(entry: Path) -> None:
    """Temp files of an earlier build that a kill interrupted (we hold the build lock)."""
    for pattern in (f"{entry.name}.*{TEMP_MARK}*", f".{entry.name}.*{TEMP_MARK}"):
        for tmp in entry.parent.glob(pattern):
            _remove(tmp)


def _temp(path: Path) -> Path:
    return path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")


def _build(files: FileList, size: int, channels: int | None, entry: Path, key: str,
           what: str, workers: int) -> DecodedSet:
    """Decode ``files`` into the entry's temp files, rename them into place, write the key last."""
    paths = files.paths
    chunk = max(1, min(256, math.ceil(len(paths) / (8 * workers))))
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    started = time.perf_counter()
    pool = (ProcessPoolExecutor(workers, initializer=_exit_with_parent, initargs=(os.getpid(),))
            if workers > 1 and len(chunks) > 1 else None)
    try:
        if channels is None:
            channels = majority_channels(paths, what, pool)
        images_tmp = _temp(_images_path(entry))
        try:
            kept, skipped, sums, sq_sums, digests = _decode_into(images_tmp, chunks, size, channels, pool, what)
        except BaseException:
            _remove(images_tmp)
            raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    labels = np.frombuffer(files.labels, dtype=np.int64)[np.asarray(kept, dtype=np.int64)]
    pixels = max(1, len(kept) * size * size)
    mean = sums / pixels
    std = np.sqrt(np.maximum(sq_sums / pixels - mean**2, 0.0))
    os.replace(images_tmp, _images_path(entry))
    _save_array(_labels_path(entry), labels)
    _save_array(_digests_path(entry), np.frombuffer(bytes(digests), np.uint8).reshape(-1, DIGEST_BYTES))
    tbio.kill_point("decoded-cache-before-key")
    meta = {"format": FORMAT, "key": key, "shape": [len(kept), channels, size, size], "channels": channels,
            "mean": [round(float(m) / 255, 4) for m in mean], "std": [round(float(s) / 255, 4) for s in std],
            "skipped": [[i, paths[i], reason] for i, reason in skipped]}
    tbio.atomic_write_text(_key_path(entry), json.dumps(meta) + "\n")
    seconds = time.perf_counter() - started
    log.info("Decoded %d %s in %.1f s (%.0f images/s) into %s.", len(paths), what, seconds,
             len(paths) / max(seconds, 1e-9), _images_path(entry))
    opened = _open(entry, key)
    assert opened is not None, f"the decoded cache {entry} just written cannot be read"
    opened.built = True
    return opened


def _save_array(path: Path, values: np.ndarray) -> None:
    """``values`` as the ``.npy`` file ``path`` (temp file, fsync, rename)."""
    tmp = _temp(path)
    with open(tmp, "wb") as f:
        np.save(f, values)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when its parent process is gone (killed, say),
    instead of waiting forever for work."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def majority_channels(paths: list[str], what: str, pool: ProcessPoolExecutor | None = None) -> int:
    """1 when most files are grayscale, else 3 (reads only the headers): what ``channels`` None
    decodes to."""
    found = list(pool.map(native_channels, paths, chunksize=256) if pool else map(native_channels, paths))
    gray, colour = found.count(1), found.count(3)
    channels = 1 if gray > colour else 3
    if gray and colour:
        log.info("The %s mix grayscale (%d) and colour (%d) images; all become %s (or pass --channels).", what,
                 gray, colour, "grayscale" if channels == 1 else "RGB")
    return channels


def _decode_into(tmp: Path, chunks: list[list[str]], size: int, channels: int,
                 pool: ProcessPoolExecutor | None, what: str
                 ) -> tuple[list[int], list[tuple[int, str]], np.ndarray, np.ndarray, bytearray]:
    """Stream the decoded chunks, in order, into the ``.npy`` file ``tmp`` (memory stays flat);
    return the kept positions, the ``(position, reason)`` of bad files, the pixel sums and the
    files' content hashes."""
    total = sum(len(c) for c in chunks)
    results: Iterator[DecodedChunk] = (pool.map(decode_chunk, chunks, repeat(size), repeat(channels))
                                       if pool else map(decode_chunk, chunks, repeat(size), repeat(channels)))
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    sums = np.zeros(channels, dtype=np.float64)
    sq_sums = np.zeros(channels, dtype=np.float64)
    digests = bytearray()
    with open(tmp, "wb") as f, DecodeProgress(what, total) as progress:
        header = _write_header(f, (total, channels, size, size))
        start = 0
        for chunk, result in zip(chunks, results):
            f.write(result.images.tobytes())
            kept += [start + i for i in result.kept]
            skipped += [(start + i, reason) for i, reason in result.bad]
            sums += result.pixel_sum.astype(np.float64)
            sq_sums += result.pixel_sq_sum.astype(np.float64)
            digests += result.digests
            start += len(chunk)
            progress.advance(len(chunk))
            tbio.kill_point("decoded-cache-chunk")
        if len(kept) < total:  # bad files left out: the header must give the real count
            f.seek(0)
            if _write_header(f, (len(kept), channels, size, size)) != header:
                raise RuntimeError("the .npy header changed length")  # impossible for 4-D uint8 shapes
            f.truncate(header + len(kept) * channels * size * size)
        f.flush()
        os.fsync(f.fileno())
    return kept, skipped, sums, sq_sums, digests


def _write_header(f: Any, shape: tuple[int, ...]) -> int:
    """Write a ``.npy`` (version 1.0) header for a C-order uint8 array of ``shape``; return its
    length. Its padding makes it 128 bytes for any 4-D shape of realistic size, so it can be
    rewritten in place with a smaller count."""
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return f.tell()
