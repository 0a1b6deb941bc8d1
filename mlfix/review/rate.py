"""Decisions per reviewer per minute, counted in the decisions database: one allowance for every server.

:class:`~mlfix.review.guard.RateLimiter` keeps its token buckets in the memory of one server
process: with two ``mlfix serve`` processes behind a load balancer a reviewer would get the
allowance twice. :class:`DatabaseRateLimiter` keeps the same bucket (``per_minute`` tokens, refilled
at ``per_minute / 60`` per second, all or none) as one row per reviewer in the table
``rate_buckets``, and takes tokens with one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ...
RETURNING`` statement: the database locks the row, refills it, takes ``n`` only when enough is left,
and answers whether it did, so two servers taking at once never both get the last tokens.

:func:`limiter_for` picks: PostgreSQL (several servers can share it) gets the database's bucket,
SQLite (one server) the process's, which costs no write.

Times are ``time.time()`` of the server (clocks within a second of each other, as NTP keeps them,
move a bucket by less than a second's refill); tests pass their own ``clock``.

Example (SQLite in memory; the same on PostgreSQL):
    >>> now = [0.0]
    >>> bucket = DatabaseRateLimiter(sa.create_engine("sqlite://"), per_minute=60, clock=lambda: now[0])
    >>> bucket.take("ann", 60), bucket.take("ann", 1)
    (True, False)
    >>> now[0] = 1.0; bucket.take("ann", 1), round(bucket.wait_s("ann", 2))
    (True, 2)
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import sqlalchemy as sa

from mlfix.review.database import lock_key, unavailable_as_error
from mlfix.review.guard import RateLimiter, shared_limiter

metadata = sa.MetaData()
rate_buckets = sa.Table(
    "rate_buckets", metadata,
    sa.Column("reviewer", sa.String(200), primary_key=True),
    sa.Column("tokens", sa.Float(precision=53), nullable=False),
    sa.Column("at_s", sa.Float(precision=53), nullable=False),  # seconds since the epoch of the last take
)


class DatabaseRateLimiter:
    """At most ``per_minute`` decisions per reviewer per minute across every server on ``engine``'s database.

    The interface of :class:`~mlfix.review.guard.RateLimiter` (``per_minute``, :meth:`take`,
    :meth:`wait_s`). ``engine``: a SQLAlchemy engine (the decisions store's); ``clock``: seconds
    since the epoch (default :func:`time.time`). Raises :class:`~mlfix.errors.StoreUnavailable`
    when the database cannot be reached (the batch is then resent, like a failed write).
    """

    def __init__(self, engine: sa.Engine, per_minute: int, clock: Callable[[], float] | None = None) -> None:
        if isinstance(per_minute, bool) or not isinstance(per_minute, int) or per_minute < 1:
            raise ValueError(f"per_minute must be a positive int, got {per_minute!r}")
        self.engine, self.per_minute = engine, per_minute
        self.clock = clock or time.time
        self._url = engine.url.render_as_string(hide_password=False)
        with unavailable_as_error(self._url), self.engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # two servers starting at once: one CREATE, not two
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("mlfix-schema")})
            metadata.create_all(conn, checkfirst=True)

    def _level(self, now: float) -> sa.ColumnElement:
        """The stored bucket refilled up to ``now`` (an SQL expression over the row)."""
        t = rate_buckets
        refill = sa.case((t.c.at_s < now, (now - t.c.at_s) * (self.per_minute / 60.0)), else_=0.0)
        return sa.case((t.c.tokens + refill > self.per_minute, float(self.per_minute)), else_=t.c.tokens + refill)

    def take(self, reviewer: str, n: int) -> bool:
        """Take ``n`` decisions from ``reviewer``'s allowance: True when allowed (and counted)."""
        if n > self.per_minute:
            return False  # more than a full bucket: never allowed at once
        now = float(self.clock())
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        level = self._level(now)
        statement = insert(rate_buckets).values(reviewer=reviewer, tokens=float(self.per_minute - n), at_s=now)
        statement = statement.on_conflict_do_update(
            index_elements=[rate_buckets.c.reviewer], set_={"tokens": level - n, "at_s": now},
            where=level >= n).returning(rate_buckets.c.tokens)
        with unavailable_as_error(self._url), self.engine.connect() as conn:
            conn = conn.execution_options(mlfix_write=True)  # SQLite: BEGIN IMMEDIATE
            with conn.begin():
                return conn.execute(statement).first() is not None

    def wait_s(self, reviewer: str, n: int) -> float:
        """Seconds until ``n`` decisions would be allowed (0 when they are now)."""
        now = float(self.clock())
        t = rate_buckets
        with unavailable_as_error(self._url), self.engine.connect() as conn:
            tokens = conn.execute(sa.select(self._level(now)).where(t.c.reviewer == reviewer)).scalar()
        tokens = float(self.per_minute) if tokens is None else float(tokens)
        return max(0.0, (min(n, self.per_minute) - tokens) * 60.0 / self.per_minute)


_BY_DATABASE: dict[tuple[str, int], DatabaseRateLimiter] = {}
_LOCK = threading.Lock()


def limiter_for(store, per_minute: int) -> RateLimiter | DatabaseRateLimiter:
    """The limiter for a decisions store: the database's on PostgreSQL (shared by every server on
    it), the process's on SQLite (one server per file). One per database and ``per_minute``."""
    if store is None or store.dialect != "postgresql":
        return shared_limiter(per_minute)
    key = (store.url, per_minute)
    with _LOCK:
        if key not in _BY_DATABASE:
            _BY_DATABASE[key] = DatabaseRateLimiter(store.engine, per_minute)
        return _BY_DATABASE[key]
