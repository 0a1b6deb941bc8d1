"""Work split for a team: a reviewer claims a page of a class for a limited time.

While ann holds page 3 of ``cat`` (until 14:05), bob asking for page 3 is told so
(:class:`ClaimTaken`) and :meth:`ClaimBook.claim_next` gives him the next free page. A claim ends
when its holder releases it, moves to another page of the same class, or lets it expire.

Claims live in the ``claims`` table of the decisions database (the same SQLAlchemy URL: SQLite file
or PostgreSQL)::

    id  label  page  reviewer  claimed_at        expires_at        ended_at          ended_by
    1   cat    3     ann       2026-11-27 13:50  2026-11-27 14:05  NULL              NULL
    2   cat    0     bob       2026-11-27 13:40  2026-11-27 13:55  2026-11-27 13:55  expiry

Race-free on both databases: every change happens in one write transaction that first takes a
per-label lock (SQLite: ``BEGIN IMMEDIATE``, one writer at a time; PostgreSQL: a transaction-level
advisory lock on the label), ends the expired claims of that label, and then reads and writes. A
partial unique index, at most one open claim (``ended_at IS NULL``) per (label, page), makes the
database itself refuse a second holder should anything else write the table. So two reviewers
asking at once get different pages.

``label`` is the class label, or any name for an ordered list of pages. The Review page claims
*sample rows* instead (:meth:`ClaimBook.claim_rows`, label ``"samples"``, page = the sample's row
in the project): what a reviewer holds is a fixed set of images, whatever the page size or sort,
so two reviewers sorting or paging differently never get the same images. Times come from the
injectable ``clock`` (UTC), so tests can let claims expire without waiting.

Example::

    book = ClaimBook(project.reviews.url)
    page = book.claim_next("cat", n_pages=12, reviewer="bob", start=3)   # 3, or the next free page
    book.renew("cat", page, "bob")                                       # still on it: 15 more minutes
    book.release("cat", "bob")
"""

from __future__ import annotations

import datetime as _dt
import numbers
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mlfix.review.database import UTCDateTime, create_engine, lock_key, unavailable_as_error
from mlfix.errors import ClaimTaken

DEFAULT_MINUTES = 15.0
MAX_MINUTES = 24 * 60.0
ACTIVE_COLUMNS = ["label", "page", "reviewer", "claimed_at", "expires_at", "minutes_left"]

metadata = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
claims_table = sa.Table(
    "claims", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("page", sa.Integer, nullable=False),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("ended_by", sa.String(16), nullable=True),  # release, move, expiry, admin
    sa.CheckConstraint("page >= 0", name="claims_page"),
    sa.CheckConstraint("length(reviewer) > 0", name="claims_reviewer"),
    sa.CheckConstraint("expires_at > claimed_at", name="claims_expiry"),
    sqlite_autoincrement=True,
)
# At most one open claim per page, kept by the database itself.
sa.Index("claims_one_holder", claims_table.c.label, claims_table.c.page, unique=True,
         sqlite_where=claims_table.c.ended_at.is_(None), postgresql_where=claims_table.c.ended_at.is_(None))
sa.Index("claims_by_reviewer", claims_table.c.reviewer, claims_table.c.label)


@dataclass(frozen=True)
class Claim:
    """An open claim: ``page`` (0-based) of ``label`` held by ``reviewer`` until ``expires_at``."""

    label: str
    page: int
    reviewer: str
    claimed_at: _dt.datetime
    expires_at: _dt.datetime


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class ClaimBook:
    """Claims on pages, stored beside the decisions (``url``: the decisions store's SQLAlchemy URL).

    ``clock``: returns the current time, timezone-aware (default: the system clock in UTC).
    ``engine``: share an existing engine (e.g. ``ClaimBook.for_store(store)``).
    """

    def __init__(self, url: str, clock: Callable[[], _dt.datetime] | None = None, *,
                 engine: sa.Engine | None = None, **engine_kwargs: Any):
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a SQLAlchemy URL string such as 'sqlite:///reviews.db', got {url!r}")
        self.url = url
        self.clock = clock or _utcnow
        self._owns_engine = engine is None
        if engine is None:
            engine = create_engine(url, **engine_kwargs)
        self.engine = engine
        self.dialect = engine.dialect.name
        with self._write("") as conn:
            metadata.create_all(conn, checkfirst=True)

    @classmethod
    def for_store(cls, store, clock: Callable[[], _dt.datetime] | None = None) -> "ClaimBook":
        """A claim book in the same database as ``store`` (a :class:`~mlfix.review.store.ReviewStore`), sharing its engine."""
        return cls(store.url, clock, engine=store.engine)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> "ClaimBook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the write transaction -------------------------------------------------------------------

    @contextmanager
    def _write(self, label: str) -> Iterator[Connection]:
        """One write transaction holding the lock of ``label`` ("" for schema changes)."""
        with unavailable_as_error(self.url), self.engine.connect() as conn:
            conn = conn.execution_options(mlfix_write=True)  # SQLite: BEGIN IMMEDIATE
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(f"mlfix-claims:{label}")})
                yield conn

    def _now(self) -> _dt.datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return timezone-aware datetimes (e.g. datetime.now(timezone.utc))")
        return now.astimezone(_dt.timezone.utc)

    def _expire(self, conn: Connection, label: str, now: _dt.datetime) -> None:
        t = claims_table
        conn.execute(t.update().where(t.c.label == label, t.c.ended_at.is_(None), t.c.expires_at <= now)
                     .values(ended_at=t.c.expires_at, ended_by="expiry"))

    def _holders(self, conn: Connection, label: str) -> dict[int, dict]:
        t = claims_table
        rows = conn.execute(sa.select(t.c.page, t.c.reviewer, t.c.claimed_at, t.c.expires_at)
                            .where(t.c.label == label, t.c.ended_at.is_(None))).mappings()
        return {int(r["page"]): dict(r) for r in rows}

    def _take(self, conn: Connection, label: str, page: int, reviewer: str, now: _dt.datetime,
              minutes: float, holders: dict[int, dict], keep_others: bool) -> _dt.datetime:
        """Claim (or extend) ``page`` for ``reviewer``; the caller checked nobody else holds it."""
        t = claims_table
        until = now + _dt.timedelta(minutes=minutes)
        if not keep_others:
            conn.execute(t.update().where(t.c.label == label, t.c.reviewer == reviewer, t.c.page != page,
                                          t.c.ended_at.is_(None)).values(ended_at=now, ended_by="move"))
        if page in holders:  # their own claim: extend it
            conn.execute(t.update().where(t.c.label == label, t.c.page == page, t.c.ended_at.is_(None))
                         .values(expires_at=until))
        else:
            conn.execute(t.insert().values(label=label, page=page, reviewer=reviewer, claimed_at=now,
                                           expires_at=until))
        return until

    # -- the API -------------------------------------------------------------------------------

    def claim(self, label: str, page: int, reviewer: str, minutes: float = DEFAULT_MINUTES,
              keep_others: bool = False) -> Claim:
        """Claim ``page`` (0-based) of ``label`` for ``minutes``; extend it when ``reviewer`` holds it.

        A reviewer holds one page per label: claiming another ends their other claims on that label
        (``keep_others=True`` keeps them). Raises :class:`ClaimTaken` when someone else holds it.
        Example: ``book.claim("cat", 2, "ann") -> Claim("cat", 2, "ann", ..., expires_at=now+15 min)``
        """
        label, reviewer, minutes = _check(label, reviewer, minutes)
        page = _check_page(page)
        with self._write(label) as conn:
            now = self._now()
            self._expire(conn, label, now)
            holders = self._holders(conn, label)
            held = holders.get(page)
            if held is not None and held["reviewer"] != reviewer:
                raise ClaimTaken(label, page, held["reviewer"], held["expires_at"])
            mine = {page: held} if held is not None else {}
            until = self._take(conn, label, page, reviewer, now, minutes, mine, keep_others)
            claimed_at = held["claimed_at"] if held is not None else now
        return Claim(label, page, reviewer, claimed_at, until)

    def claim_next(self, label: str, n_pages: int, reviewer: str, minutes: float = DEFAULT_MINUTES,
                   start: int = 0) -> int | None:
        """Claim the first page from ``start`` on (wrapping around) that is free or already ``reviewer``'s.

        Returns the page (0-based), or None when every one of the ``n_pages`` pages is held by
        someone else. Ends the reviewer's other claims on ``label``.
        Example: ann holds 0, ``book.claim_next("cat", 5, "bob") -> 1``
        """
        label, reviewer, minutes = _check(label, reviewer, minutes)
        if isinstance(n_pages, bool) or not isinstance(n_pages, int) or n_pages < 0:
            raise ValueError(f"n_pages must be a non-negative int, got {n_pages!r}")
        if n_pages == 0:
            return None
        start = _check_page(start) % n_pages
        with self._write(label) as conn:
            now = self._now()
            self._expire(conn, label, now)
            holders = self._holders(conn, label)
            for offset in range(n_pages):
                page = (start + offset) % n_pages
                held = holders.get(page)
                if held is None or held["reviewer"] == reviewer:
                    self._take(conn, label, page, reviewer, now, minutes, {page: held} if held else {}, False)
                    return page
        return None

    def claim_rows(self, label: str, rows: Collection[int], reviewer: str,
                   minutes: float = DEFAULT_MINUTES) -> dict[int, Claim]:
        """Claim exactly ``rows`` (fixed sample rows, stored as pages of ``label``) for ``reviewer``.

        All or nothing: when someone else holds any of them, nothing changes and the conflicting
        claims are returned (``{row: Claim}``); otherwise the rows are claimed (or extended), the
        reviewer's other claims on ``label`` end, and ``{}`` is returned. Claims on sample rows do
        not depend on how a page is sorted or sized, so two reviewers never hold the same image.
        Example: ``book.claim_rows("samples", [4, 9, 12], "ann") -> {}``
        """
        label, reviewer, minutes = _check(label, reviewer, minutes)
        wanted = sorted({_check_page(_plain_int(r)) for r in rows})
        t = claims_table
        with self._write(label) as conn:
            now = self._now()
            self._expire(conn, label, now)
            holders = self._holders(conn, label)
            taken = {r: Claim(label, r, h["reviewer"], h["claimed_at"], h["expires_at"])
                     for r in wanted if (h := holders.get(r)) is not None and h["reviewer"] != reviewer}
            if taken:
                return taken
            until = now + _dt.timedelta(minutes=minutes)
            mine = {r for r, h in holders.items() if h["reviewer"] == reviewer}
            keep = set(wanted)
            mine_open = [t.c.label == label, t.c.reviewer == reviewer, t.c.ended_at.is_(None)]
            for chunk in _chunks(sorted(mine - keep)):
                conn.execute(t.update().where(*mine_open, t.c.page.in_(chunk)).values(ended_at=now, ended_by="move"))
            for chunk in _chunks(sorted(mine & keep)):
                conn.execute(t.update().where(*mine_open, t.c.page.in_(chunk)).values(expires_at=until))
            new = [{"label": label, "page": r, "reviewer": reviewer, "claimed_at": now, "expires_at": until}
                   for r in wanted if r not in mine]
            if new:
                conn.execute(t.insert(), new)
        return {}

    def held_by_others(self, label: str, reviewer: str) -> dict[int, Claim]:
        """The open, unexpired claims on ``label`` of everyone but ``reviewer``, by page (or row)."""
        label = _check_label(label)
        return {c.page: c for c in self._open(label) if c.reviewer != reviewer}

    def recent(self, label: str, reviewer: str, minutes: float = DEFAULT_MINUTES) -> set[int]:
        """The pages (rows) of ``label`` that ``reviewer`` holds, or held in the last ``minutes``: what
        they were shown lately, whichever server showed it (a tab that moved to another server)."""
        label, reviewer, minutes = _check(label, reviewer, minutes)
        t = claims_table
        since = self._now() - _dt.timedelta(minutes=minutes)
        lately = sa.or_(sa.and_(t.c.ended_at.is_(None), t.c.expires_at > since), t.c.ended_at > since)
        query = sa.select(t.c.page).where(t.c.label == label, t.c.reviewer == reviewer, lately).distinct()
        with unavailable_as_error(self.url), self.engine.connect() as conn:
            return {int(page) for page in conn.execute(query).scalars()}

    def renew(self, label: str, page: int, reviewer: str, minutes: float = DEFAULT_MINUTES) -> _dt.datetime:
        """Extend ``reviewer``'s claim on ``page`` (re-claim it if it expired and is still free).

        Returns the new expiry; raises :class:`ClaimTaken` when someone else took the page meanwhile.
        """
        return self.claim(label, page, reviewer, minutes, keep_others=True).expires_at

    def release(self, label: str, reviewer: str | None = None, page: int | None = None, *, force: bool = False) -> int:
        """End claims on ``label``: ``reviewer``'s (all their pages, or ``page``), or with
        ``force=True`` whoever holds ``page`` (an admin freeing a page). Returns how many ended.
        """
        label = _check_label(label)
        t = claims_table
        condition = [t.c.label == label, t.c.ended_at.is_(None)]
        if page is not None:
            condition.append(t.c.page == _check_page(page))
        if force:
            if page is None and reviewer is None:
                raise ValueError("release(force=True) needs a page or a reviewer: it does not free a whole label by accident")
            if reviewer is not None:
                condition.append(t.c.reviewer == reviewer)
        else:
            if not isinstance(reviewer, str) or not reviewer.strip():
                raise ValueError("release() needs the reviewer whose claims end (or force=True with a page)")
            condition.append(t.c.reviewer == reviewer)
        with self._write(label) as conn:
            now = self._now()
            self._expire(conn, label, now)
            result = conn.execute(t.update().where(*condition).values(ended_at=now, ended_by="admin" if force else "release"))
            return int(result.rowcount or 0)

    def holder(self, label: str, page: int) -> Claim | None:
        """Who holds ``page`` of ``label`` now (None when free)."""
        for claim in self._open(_check_label(label), _check_page(page)):
            return claim
        return None

    def _open(self, label: str | None = None, page: int | None = None) -> list[Claim]:
        t = claims_table
        now = self._now()
        query = sa.select(t.c.label, t.c.page, t.c.reviewer, t.c.claimed_at, t.c.expires_at).where(
            t.c.ended_at.is_(None), t.c.expires_at > now).order_by(t.c.label, t.c.page)
        if label is not None:
            query = query.where(t.c.label == label)
        if page is not None:
            query = query.where(t.c.page == page)
        with unavailable_as_error(self.url), self.engine.connect() as conn:
            return [Claim(r.label, int(r.page), r.reviewer, r.claimed_at, r.expires_at) for r in conn.execute(query)]

    def active(self, label: str | None = None) -> pd.DataFrame:
        """Open, unexpired claims (of ``label``, or all): label, page, reviewer, claimed_at, expires_at, minutes_left."""
        now = self._now()
        claims = self._open(None if label is None else _check_label(label))
        frame = pd.DataFrame([(c.label, c.page, c.reviewer, c.claimed_at, c.expires_at,
                               round((c.expires_at - now).total_seconds() / 60, 1)) for c in claims],
                             columns=ACTIVE_COLUMNS)
        return frame.astype({"page": "int64", "minutes_left": "float64"})

    def history(self, label: str | None = None) -> pd.DataFrame:
        """Every claim ever made (open or ended), by id: who held which page when, and how it ended."""
        t = claims_table
        query = sa.select(t).order_by(t.c.id)
        if label is not None:
            query = query.where(t.c.label == label)
        with unavailable_as_error(self.url), self.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(query)]
        frame = pd.DataFrame.from_records(rows, columns=[c.name for c in t.columns])
        ended_by = frame["ended_by"].astype(object)
        frame["ended_by"] = ended_by.where(ended_by.notna(), None)  # None for open claims, not NaN
        return frame


def _plain_int(value: Any) -> Any:
    """A numpy integer as an int (``_check_page`` refuses everything else that is not an int)."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _chunks(values: list[int], size: int = 500) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _check_label(label: Any) -> str:
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty str (a class label or page-list name), got {label!r}")
    return label


def _check_page(page: Any) -> int:
    if isinstance(page, bool) or not isinstance(page, int) or page < 0:
        raise ValueError(f"page must be a 0-based int >= 0, got {page!r}")
    return int(page)


def _check(label: Any, reviewer: Any, minutes: Any) -> tuple[str, str, float]:
    label = _check_label(label)
    if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer) > 200:
        raise ValueError(f"reviewer must be a non-empty name of at most 200 characters, got {reviewer!r}")
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 < minutes <= MAX_MINUTES:
        raise ValueError(f"minutes must be a number in (0, {MAX_MINUTES:g}], got {minutes!r}")
    return label, reviewer, float(minutes)
