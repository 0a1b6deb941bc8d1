"""The database plumbing shared by the decisions store (:mod:`mlfix.review.store`) and the page claims
(:mod:`mlfix.review.claims`): one engine factory for SQLite and PostgreSQL, the errors a UI can act on,
timestamps that always come back in UTC, advisory-lock keys, and the queue of writers to a SQLite file.

SQLite runs in WAL mode with ``synchronous=FULL`` (a committed transaction survives a killed process
and a power cut) and writes begin with ``BEGIN IMMEDIATE`` (see :func:`configure_sqlite`);
PostgreSQL connections give up after :data:`PG_CONNECT_TIMEOUT_S` rather than the system's TCP
timeout, and are checked before use (``pool_pre_ping``).
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from mlfix.errors import StoreUnavailable

try:
    import fcntl
except ImportError:  # Windows: SQLite's busy timeout alone
    fcntl = None

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10


def create_engine(url: str, **engine_kwargs: Any) -> Engine:
    """A SQLAlchemy engine for ``sqlite:///...`` or ``postgresql+psycopg://...``, configured as above."""
    backend = sa.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        engine_kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = sa.create_engine(url, **engine_kwargs)
        configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        engine_kwargs.setdefault("pool_pre_ping", True)
        # An unreachable host fails in seconds, not after the system's TCP timeout (minutes).
        engine_kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
        return sa.create_engine(url, **engine_kwargs)
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


@contextmanager
def unavailable_as_error(url: str) -> Iterator[None]:
    """Turn "cannot reach the database" errors of the driver into :class:`StoreUnavailable`."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as error:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        reason = str(getattr(error, "orig", error) or error).strip().splitlines()
        raise StoreUnavailable(f"the decisions database {shown} is unavailable ({reason[0] if reason else error}): "
                               "decisions are NOT being saved; retry when it is back") from error


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp that is always returned timezone-aware in UTC (SQLite stores naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("created_at must be timezone-aware")
            value = value.astimezone(_dt.timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value


def sqlite_url(path: str | os.PathLike) -> str:
    """The SQLAlchemy URL of a SQLite file, e.g. ``sqlite_url("p/reviews.db") == "sqlite:////abs/p/reviews.db"``."""
    return f"sqlite:///{Path(path).resolve()}"


def configure_sqlite(engine: Engine) -> None:
    """WAL, fsync on commit, a busy timeout, and transactions that SQLAlchemy begins itself.

    pysqlite's own transaction handling begins lazily with a deferred BEGIN; a deferred transaction
    that reads and then writes can fail with SQLITE_BUSY without waiting, so writes here take the
    write lock up front with ``BEGIN IMMEDIATE`` (the documented SQLAlchemy recipe).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        write = conn.get_execution_options().get("mlfix_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def lock_key(text: str) -> int:
    """A signed 64-bit key for pg_advisory_xact_lock."""
    return zlib.crc32(text.encode()) - 2**31


class WriterQueue:
    """Writers to one SQLite file queue on a lock file beside it (``reviews.db.lock``, flock).

    The kernel wakes a waiter as soon as the lock is free, where SQLite's busy handler polls with
    sleeps of up to 100 ms and starves some writers when many write at once. Hold :meth:`turn` around
    a write transaction. For PostgreSQL, an in-memory database or without flock (Windows) the turn
    is free: the database's own locks (and SQLite's busy timeout) do the work.

    Threads share this process's lock file descriptor; a forked child opens its own.

        >>> with WriterQueue("sqlite://").turn():  # in memory: nothing to queue on
        ...     pass
    """

    def __init__(self, url: str):
        parsed = sa.engine.make_url(url)
        database = parsed.database if parsed.get_backend_name() == "sqlite" else None
        in_memory = not database or database == ":memory:" or database.startswith("file:")
        self.path = None if in_memory else f"{Path(database).resolve()}.lock"
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this writer's turn and hold it for the block."""
        if self.path is None or fcntl is None:
            yield
            return
        with self._thread_lock:  # threads share this process's lock file descriptor
            if self._fd is None or self._pid != os.getpid():  # a fork shares the descriptor
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (a later :meth:`turn` opens it again)."""
        with self._thread_lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None
