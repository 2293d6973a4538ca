"""Optuna storage, samplers and pruners, and the lock that makes a study's trial count exact.

Storage is an Optuna RDB storage: SQLite ``optuna.db`` in the working directory by default
(:data:`DEFAULT_STORAGE`), PostgreSQL when several workers (processes, machines) share a study.
Workers record a heartbeat; a trial whose worker died is failed after ``grace_period`` seconds
and queued again with the same parameters. Creating a trial is serialised between workers by
``_ClaimLock`` (a lock file beside SQLite, an advisory lock in PostgreSQL).
"""

from __future__ import annotations

import fcntl
import importlib.util
import inspect
import logging
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("xrdid.tune")  # one logger for the whole package, as before the split

DEFAULT_STORAGE = "sqlite:///optuna.db"


def make_storage(url: str, heartbeat_interval: int | None = 10, grace_period: int | None = 60,
                 max_retry: int | None = 3,
                 on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
                 ) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats: a trial silent for ``grace_period`` s is failed and retried.

    ``on_stale(study, trial)`` runs for each such trial before it is queued again (at most
    ``max_retry`` times). SQLite waits up to 60 s for a lock, so local workers can share it.

    Examples
    --------
    >>> storage = make_storage("sqlite:///:memory:", heartbeat_interval=1, grace_period=2)
    >>> storage.get_heartbeat_interval()
    1
    """
    import optuna

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
        or optuna.storages.RetryFailedTrialCallback  # optuna < 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = retry_cls(max_retry=max_retry)

    def stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning("tune: trial %d of %s lost its worker (no heartbeat for %s s): failed, queued again",
                    trial.number, study.study_name, grace_period)
        if on_stale is not None:
            on_stale(study, trial)
        retry(study, trial)

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif url.startswith(("postgresql", "mysql")):
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}  # survive a restarted database server
    callback_name = "heartbeat_stale_trial_callback"
    if callback_name not in inspect.signature(optuna.storages.RDBStorage.__init__).parameters:
        callback_name = "failed_trial_callback"  # optuna < 4.9
    heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                 callback_name: stale} if heartbeat_interval else {}
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental
                return optuna.storages.RDBStorage(url, **kwargs, **heartbeat)
        except sqlalchemy.exc.SQLAlchemyError:
            # workers starting together on an empty database race to create Optuna's tables (PostgreSQL:
            # duplicate enum type); the loser finds them made on the next attempt
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def make_sampler(name: str, seed: int | None,
                 grid: Mapping[str, Sequence[Any]] | None = None) -> optuna.samplers.BaseSampler:
    """``tpe`` | ``random`` | ``grid`` (``grid`` needs the grid's values)."""
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in (grid or {}).items()}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, options: Mapping[str, Any] | None = None,
                max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    """``median`` | ``hyperband`` | ``none``; ``options`` are the pruner's keyword arguments.

    Hyperband's ``max_resource`` defaults to the largest ``epochs`` searched.

    Examples
    --------
    >>> type(make_pruner("hyperband", {"reduction_factor": 2}, max_epochs=40)).__name__
    'HyperbandPruner'
    """
    import optuna

    options = dict(options or {})
    if name == "median":
        return optuna.pruners.MedianPruner(**options)
    if name == "hyperband":
        if max_epochs:
            options.setdefault("max_resource", max_epochs)
        return optuna.pruners.HyperbandPruner(**options)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}")


def storage_url(url: str) -> str:
    """``url`` with an explicit PostgreSQL driver when it names none.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which this project does not
    install; psycopg2 (``psycopg2-binary``) is its dependency.

    Examples
    --------
    >>> storage_url("postgresql://u:p@db:5432/xrdid")  # with psycopg2, without psycopg
    'postgresql+psycopg2://u:p@db:5432/xrdid'
    >>> storage_url("postgresql+psycopg2://u:p@db:5432/xrdid")  # a driver named: unchanged
    'postgresql+psycopg2://u:p@db:5432/xrdid'
    >>> storage_url("sqlite:///optuna.db")
    'sqlite:///optuna.db'
    """
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _safe_url(url: str) -> str:
    """``url`` with its password hidden (it goes into logs and MLflow tags).

    Examples
    --------
    >>> _safe_url("postgresql+psycopg2://xrdid:secret@db:5432/xrdid")
    'postgresql+psycopg2://xrdid:***@db:5432/xrdid'
    """
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: log it as it is
        return url


class _ClaimLock:
    """Serialises "count the study's open trials, then create one" between workers.

    Without it two workers could both see ``n - 1`` trials and both start one. SQLite: an
    exclusive ``flock`` on ``<database>.lock`` (workers on one machine); PostgreSQL: a session
    advisory lock (any machine). Both vanish with a dead worker. Other databases: no lock,
    the total may overshoot by up to workers - 1.
    """

    def __init__(self, url: str, study: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self._url, self._held = url, False
        self._key = zlib.crc32(f"xrdid.tune:{study}".encode())
        self._backend = parsed.get_backend_name()
        self._file: Any = None
        self._conn: Any = None
        self._thread_lock = threading.Lock()
        database = parsed.database or ""
        self._path = None if self._backend != "sqlite" or database in ("", ":memory:") else Path(database + ".lock")
        if self._backend not in ("sqlite", "postgresql"):
            log.warning("tune: no trial-claim lock for %s; the study may get a few more trials than asked",
                        self._backend)

    def acquire(self) -> None:
        if self._backend == "postgresql":
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            engine = sqlalchemy.create_engine(self._url, poolclass=NullPool)
            self._conn = engine.connect()
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        elif self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        else:
            self._thread_lock.acquire()
        self._held = True

    def release(self) -> None:
        """Release if held (idempotent: the objective releases it, the loop makes sure)."""
        if not self._held:
            return
        self._held = False
        if self._conn is not None:
            import sqlalchemy

            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            finally:
                self._conn.close()
                self._conn = None
        elif self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        else:
            self._thread_lock.release()


def _fail_stale(study: optuna.Study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
