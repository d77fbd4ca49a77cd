"""Where a ``toolbox tune`` study lives: an Optuna storage opened from a URL, with heartbeats.

* ``sqlite:///PATH`` (the default, ``STUDY/study.db``): one machine, any number of processes;
  ``tune.yaml`` records a database inside the study folder relative to it (:func:`recorded_url`),
  so a copied or moved folder is a study of its own;
* any other SQLAlchemy URL, e.g. ``postgresql://user:password@host/db``: many machines;
* ``journal:PATH``: Optuna's journal file on a disk every worker mounts.

Every worker sends a heartbeat while it trains a trial; a trial whose heartbeat stops for two
intervals (its worker was killed, its machine died) is marked FAIL by the next worker that looks,
and the study goes on. Optuna's RDB storage does this itself; its journal storage has no
heartbeat, so :class:`HeartbeatJournalStorage` adds one (a time stamp in the trial's system
attributes, compared across machines: their clocks must agree within the interval).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from toolbox.errors import UsageError

JOURNAL_PREFIX = "journal:"
#: ``sqlite:///`` (optionally ``sqlite+driver:///``), the path, and any ``?query``.
SQLITE_URL = re.compile(r"^(sqlite(?:\+\w+)?:///)([^?]*)(\?.*)?$")
HEARTBEAT_ATTR = "toolbox:heartbeat"
CONNECT_ATTEMPTS = 3
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]
log = logging.getLogger("toolbox")


def default_storage_url(study_dir: Path) -> str:
    """SQLite inside the study folder (absolute, so workers started elsewhere find it)."""
    return f"sqlite:///{Path(study_dir).resolve() / 'study.db'}"


def absolute_url(url: str) -> str:
    """``journal:PATH`` and ``sqlite:///PATH`` with an absolute path (the URL is recorded in the
    study folder and used by workers and ``--show`` from any working directory); others as given."""
    if url.startswith(JOURNAL_PREFIX):
        return JOURNAL_PREFIX + str(Path(url[len(JOURNAL_PREFIX):]).expanduser().absolute())
    found = SQLITE_URL.match(url)
    if not found or found[2] in ("", ":memory:"):
        return url
    return f"{found[1]}{Path(found[2]).expanduser().absolute()}{found[3] or ''}"


def recorded_url(url: str, study_dir: Path) -> str:
    """``url`` as ``STUDY/tune.yaml`` records it: an SQLite file inside the study folder relative
    to the folder (``sqlite:///study.db``), so a copy of the folder opens its own copy; any other
    URL (PostgreSQL, a journal, an SQLite file elsewhere) as given."""
    found = SQLITE_URL.match(url)
    if not found or found[2] in ("", ":memory:") or not Path(found[2]).is_absolute():
        return url
    try:
        inside = Path(found[2]).resolve().relative_to(Path(study_dir).resolve())
    except ValueError:
        return url
    return f"{found[1]}{inside.as_posix()}{found[3] or ''}"


def opened_url(recorded: str, study_dir: Path) -> str:
    """The URL to open for a ``tune.yaml`` entry: a relative SQLite path lies in ``study_dir``
    (the folder being opened, wherever it was copied to); other URLs as recorded."""
    found = SQLITE_URL.match(recorded)
    if not found or found[2] in ("", ":memory:") or Path(found[2]).is_absolute():
        return recorded
    return f"{found[1]}{Path(study_dir).resolve() / found[2]}{found[3] or ''}"


def open_storage(url: str, heartbeat: int | None = None, on_stale: StaleCallback | None = None) -> BaseStorage:
    """The storage behind ``url``; with ``heartbeat`` (seconds), trials silent for twice that are
    failed (``on_stale`` is then called with each)."""
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX):]).expanduser()
        if not path.name:
            raise UsageError(f"--storage {url!r} names no file; write journal:PATH, e.g. journal:/shared/study.log.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(path))
        except OSError as exc:
            raise UsageError(f"Cannot open the journal {path} ({exc.strerror or exc}); pass a writable path.") from None
        if heartbeat is None:
            return JournalStorage(backend)
        return HeartbeatJournalStorage(backend, heartbeat, on_stale)
    url = with_installed_driver(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                  grace_period=None if heartbeat is None else 2 * heartbeat,
                                  heartbeat_stale_trial_callback=on_stale)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds
            if attempt + 1 < CONNECT_ATTEMPTS and _is_database_error(exc):
                time.sleep(1 + attempt)  # workers creating the tables at once: one of them wins
                continue
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UsageError(f"Cannot open the study storage {hide_password(url)} ({detail}); check --storage "
                             "(and that the database server runs and its driver is installed).") from None
    raise AssertionError("unreachable")


def with_installed_driver(url: str) -> str:
    """``postgresql://`` names the psycopg (3) driver in SQLAlchemy 2.1; use psycopg2 when only it is
    installed (the ``dev`` extra installs psycopg2-binary)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _is_database_error(exc: Exception) -> bool:
    """An error the database raised (worth another try), not a malformed URL or a missing driver."""
    from sqlalchemy.exc import DBAPIError

    return isinstance(exc, DBAPIError)


def hide_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and tables)."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy understands: show it as given
        return url


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage plus the heartbeat its RDB storage has, through Optuna's own
    heartbeat machinery (``study.optimize`` beats while a trial runs and fails stale trials)."""

    def __init__(self, backend: JournalFileBackend, interval: int, on_stale: StaleCallback | None = None) -> None:
        """Beat every ``interval`` seconds; a trial silent for ``2 * interval`` is stale."""
        super().__init__(backend)
        self.interval = int(interval)
        self.on_stale = on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        """Stamp the trial with the current time."""
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose last stamp (or start) is older than two intervals."""
        deadline = time.time() - 2 * self.interval
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None and trial.datetime_start is not None:
                beat = trial.datetime_start.timestamp()
            if beat is not None and beat < deadline:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        """Seconds between two heartbeats of a running trial."""
        return self.interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        """Called with every trial this storage marks FAIL for a stopped heartbeat."""
        return self.on_stale
