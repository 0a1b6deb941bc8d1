"""The decisions store: an append-only log of what reviewers decided, in SQLite or PostgreSQL.

Every action of a reviewer is one row in the ``decisions`` table; the log, its kinds and what it
means (undo, the current label, final labels when reviewers disagree) are described in
:mod:`mlfix.review.log`, whose pure functions the store's reading methods apply to the whole log.

Rows are only ever inserted: the code has no UPDATE or DELETE on this table, and the database
refuses them too (triggers; the table and its rules are in :mod:`mlfix.review.schema`), so nothing a
reviewer did is ever overwritten. The current label of a sample is derived from the log
(:meth:`ReviewStore.current_state`).

Undo
    :meth:`ReviewStore.undo` with a sample id reverts that sample's latest effective non-undo
    decision, so pressing undo repeatedly walks back through the history; with a decision id it
    reverts exactly that decision (an undo's id: redo). Choosing the target and writing the undo
    happen in one transaction.

Retries
    Every decision carries a ``client_id`` made by the client (a UUID per action). Writing the same
    client id again stores nothing new and returns the id of the stored row, so a UI can resend a
    batch whose acknowledgement it did not see.

Durability
    SQLite runs in WAL mode with ``synchronous=FULL``: when :meth:`ReviewStore.record` returns, the
    transaction is in the WAL file and the file is fsynced, so an acknowledged decision survives a
    killed process and a power cut (``NORMAL`` would survive a killed process but could lose the
    last commits on power loss). Writers queue on a lock file beside the database
    (``reviews.db.lock``, flock: fair under many writers, where SQLite's polling busy handler starves
    some), then start with ``BEGIN IMMEDIATE``; the busy timeout covers other programs. So several
    processes, threads or browser tabs can write at once. Ids increase with each write but can
    have gaps (a retried insert consumes one).

Labels
    The store does not know the label palette: a label outside it is the caller's business (the
    project layer checks it). Pass ``labels=`` (to the constructor or per call) to have the store
    reject labels outside an allow-list.

Example::

    store = ReviewStore.for_project("my-project")          # sqlite:///my-project/reviews.db
    store.decide(["cats/001.png"], "relabel", label="dog", reviewer="alice")
    store.undo("cats/001.png", reviewer="alice")
    state = store.current_state(samples)                    # samples: DataFrame[sample_id, label]
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mlfix.review import classes
from mlfix.review.database import (StoreUnavailable, WriterQueue, create_engine, lock_key, sqlite_url,
                                   unavailable_as_error)
from mlfix.review.log import (DECISION_COLUMNS, effective_mask, final_labels, final_state,
                              find_conflicts, reviewer_summary)
from mlfix.review.schema import (check_batch, check_same_decision, decisions_table, log_frame, metadata, migrate,
                                 validate_decision)

ENV_DB_URL = "MLFIX_DB_URL"  # the decisions database of a team session (PostgreSQL)
_CHUNK = 500  # rows per IN (...) lookup: well under SQLite's bound-parameter limit
# PostgreSQL ids come from a sequence at insert, not at commit: without this lock (held to the commit)
# id 11 could be seen before 10, and a reader keyed on the last id would miss 10 for good.
WRITE_LOCK = lock_key("mlfix-decisions-write")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class ReviewStore:
    """An append-only decision log in SQLite (default) or PostgreSQL, and the state derived from it.

    ``url``: any SQLAlchemy URL, e.g. ``sqlite:////abs/path/reviews.db`` or
    ``postgresql+psycopg://user:pw@host:5432/db``. The table is created when missing.
    ``labels``: optional allow-list; when given, a relabel to a label outside it raises ValueError.

    A store holds a connection pool: make one per process (do not share one across ``fork``), and
    ``close()`` it (or use ``with ReviewStore(url) as store:``).
    """

    def __init__(self, url: str, labels: Collection[str] | None = None, **engine_kwargs: Any):
        if not isinstance(url, str) or not url:
            raise ValueError(f"url must be a SQLAlchemy URL string such as 'sqlite:///reviews.db', got {url!r}")
        self.url = url
        self.labels = frozenset(labels) if labels is not None else None
        self.engine = create_engine(url, **engine_kwargs)
        self.dialect = sa.engine.make_url(url).get_backend_name()
        self._writers = WriterQueue(url)
        with unavailable_as_error(url):
            self._create_schema()

    @classmethod
    def connect_with_retry(cls, url: str, attempts: int = 5, delay: float = 2.0, labels: Collection[str] | None = None,
                           sleep=None, **engine_kwargs: Any) -> "ReviewStore":
        """Open the store, retrying while the database is unavailable (e.g. still starting).

        Tries ``attempts`` times, ``delay`` seconds apart (doubling, at most 30 s); then raises
        :class:`StoreUnavailable` saying how often it tried. Example:
        ``ReviewStore.connect_with_retry("postgresql+psycopg://mlfix@db/mlfix", attempts=10)``.
        """
        import time

        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        sleep = time.sleep if sleep is None else sleep
        for attempt in range(1, attempts + 1):
            try:
                return cls(url, labels=labels, **engine_kwargs)
            except StoreUnavailable as error:
                if attempt == attempts:
                    raise StoreUnavailable(f"{error} (tried {attempts} times over about "
                                           f"{sum(min(30.0, delay * 2**i) for i in range(attempts - 1)):.0f} s)") from error
                sleep(min(30.0, delay * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")

    @classmethod
    def for_project(cls, project_dir: str | os.PathLike, labels: Collection[str] | None = None) -> "ReviewStore":
        """The store of a project folder, the one way mlfix opens it: the database named by
        ``MLFIX_DB_URL`` when that is set (a team session on PostgreSQL), else
        ``<project_dir>/reviews.db`` (the folder must exist)."""
        project_dir = Path(project_dir)
        if not project_dir.is_dir():
            raise ValueError(f"project folder {project_dir} does not exist: create the project first")
        url = os.environ.get(ENV_DB_URL) or sqlite_url(project_dir / "reviews.db")
        return cls(url, labels=labels)

    def close(self) -> None:
        """Close the pooled connections (and the lock file)."""
        self.engine.dispose()
        self._writers.close()

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReviewStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # -- writing ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on an exception.

        On a SQLite file, writers first queue on a lock file (:class:`~mlfix.review.database.WriterQueue`).
        The transaction itself begins with BEGIN IMMEDIATE, and the busy timeout still covers other
        programs writing to the file. On PostgreSQL it first takes the decisions' advisory lock
        (:data:`WRITE_LOCK`): writers from every server take their ids and commit one after the
        other, so ids become visible in increasing order (see :meth:`last_id`).
        """
        with unavailable_as_error(self.url), self._writers.turn():
            with self.engine.connect() as conn:
                conn = conn.execution_options(mlfix_write=True)
                with conn.begin():
                    if self.dialect == "postgresql":
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITE_LOCK})
                    yield conn

    def _create_schema(self) -> None:
        # Serialised, so that two processes opening a new database at once do not race on CREATE.
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("mlfix-schema")})
            metadata.create_all(conn, checkfirst=True)
            migrate(conn, self.dialect)  # a table made by an older mlfix: brought up to date in place

    def record(self, decisions: Mapping[str, Any] | Sequence[Mapping[str, Any]],
               labels: Collection[str] | None = None) -> list[int]:
        """Append decisions in one transaction; return their ids, in input order.

        Each decision is a dict with ``sample_id``, ``kind``, ``reviewer`` and optionally
        ``client_id`` (made here when absent), ``label`` (relabel only), ``undoes`` (undo only: the
        id of an earlier decision of the same sample; ``sample_id`` may then be left out), ``note``,
        ``view``. A client id that is already stored is not stored again: its existing id is
        returned (a retried batch stores nothing new). Reusing a client id for a *different*
        decision raises ValueError, and nothing of the batch is stored.

        Example: ``store.record({"sample_id": "a.png", "kind": "ok", "reviewer": "bob"}) -> [7]``
        """
        if isinstance(decisions, Mapping):
            decisions = [decisions]
        decisions = list(decisions)
        if not decisions:
            return []
        with self._write() as conn:  # the class list read under the write lock: a merge elsewhere is seen
            allowed = frozenset(labels) if labels is not None else classes.allowed_labels(self)
            rows = check_batch([validate_decision(d, allowed, i) for i, d in enumerate(decisions)])
            return self._insert(conn, rows)

    def _insert(self, conn: Connection, rows: list[dict]) -> list[int]:
        """Insert validated rows (skipping stored client ids) inside the caller's transaction."""
        self._check_undo_targets(conn, rows)
        now = _now()
        unique_rows = list({r["client_id"]: {**r, "created_at": now} for r in rows}.values())
        conn.execute(self._insert_ignoring_duplicates(), unique_rows)
        stored = self._rows_by_client_id(conn, [r["client_id"] for r in unique_rows])
        for r in unique_rows:
            check_same_decision(r, stored[r["client_id"]])
        return [int(stored[r["client_id"]]["id"]) for r in rows]

    def _insert_ignoring_duplicates(self):
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(decisions_table).on_conflict_do_nothing(index_elements=["client_id"])

    def _rows_by_client_id(self, conn: Connection, client_ids: list[str]) -> dict[str, dict]:
        t = decisions_table
        found: dict[str, dict] = {}
        for start in range(0, len(client_ids), _CHUNK):
            chunk = client_ids[start:start + _CHUNK]
            for row in conn.execute(sa.select(t).where(t.c.client_id.in_(chunk))).mappings():
                found[row["client_id"]] = dict(row)
        return found

    def _check_undo_targets(self, conn: Connection, rows: list[dict]) -> None:
        """An undo must point at a stored decision of the same sample (fills a missing sample_id)."""
        undos = [r for r in rows if r["kind"] == "undo"]
        if not undos:
            return
        t = decisions_table
        targets = sorted({r["undoes"] for r in undos})
        sample_of: dict[int, str] = {}
        for start in range(0, len(targets), _CHUNK):
            query = sa.select(t.c.id, t.c.sample_id).where(t.c.id.in_(targets[start:start + _CHUNK]))
            sample_of.update({int(i): s for i, s in conn.execute(query)})
        for r in undos:
            target = r["undoes"]
            if target not in sample_of:
                raise ValueError(f"undo {r['client_id']!r} points at decision {target}, which does not exist")
            if r["sample_id"] is None:
                r["sample_id"] = sample_of[target]
            elif r["sample_id"] != sample_of[target]:
                raise ValueError(f"undo of decision {target} is for sample {r['sample_id']!r}, but that "
                                 f"decision is about {sample_of[target]!r}: leave sample_id out or fix it")

    def decide(self, sample_ids: str | Iterable[str], kind: str, label: str | None = None, *,
               reviewer: str, client_id: str | None = None, note: str | None = None,
               view: str | None = None, labels: Collection[str] | None = None) -> list[int]:
        """One decision per sample, all in one transaction; returns the ids in input order.

        ``kind``: relabel (with ``label``), flag, ok or duplicate; use :meth:`undo` to undo. ``client_id``
        identifies the action for retries: one sample gets it as is, several samples get
        ``f"{client_id}:{i}"`` (so resend the same list in the same order).

        Example: ``store.decide(["a.png", "b.png"], "relabel", "dog", reviewer="alice") -> [3, 4]``
        """
        if isinstance(sample_ids, str):
            sample_ids = [sample_ids]
        sample_ids = list(sample_ids)
        if kind == "undo":
            raise ValueError("decide() makes relabel/flag/ok/duplicate decisions: use undo() to undo one")
        if client_id is None:
            client_id = uuid.uuid4().hex
        ids = [client_id] if len(sample_ids) == 1 else [f"{client_id}:{i}" for i in range(len(sample_ids))]
        return self.record([{"client_id": c, "sample_id": s, "kind": kind, "label": label,
                             "reviewer": reviewer, "note": note, "view": view}
                            for c, s in zip(ids, sample_ids)], labels=labels)

    def undo(self, target: str | int, reviewer: str, *, own: bool = False, client_id: str | None = None,
             note: str | None = None) -> int:
        """Undo a decision; return the id of the undo row.

        ``target``: a sample id (str) reverts that sample's latest effective non-undo decision
        (``own=True``: the latest one by ``reviewer``), so repeated undos walk back the history; a
        decision id (int) reverts exactly that decision, and the id of an undo restores what it
        undid (redo). Raises ValueError when there is nothing to undo, or the decision is already
        undone. Retrying with the same ``client_id`` returns the first undo's id.

        Example: ``store.undo("a.png", reviewer="alice") -> 12``
        """
        if isinstance(target, bool) or not isinstance(target, (str, int, np.integer)):
            raise ValueError(f"undo target must be a sample id (str) or a decision id (int), got {target!r}")
        client_id = client_id or uuid.uuid4().hex
        # Validate the shape first (reviewer, client id); undoes is filled in below.
        validate_decision({"client_id": client_id, "kind": "undo", "undoes": 0, "reviewer": reviewer}, None, 0)
        # Choosing the target and writing the undo happen in one transaction, under SQLite's write
        # lock or a per-sample advisory lock on PostgreSQL, so two tabs pressing undo at once
        # revert two decisions, not the same one twice.
        with self._write() as conn:
            existing = self._rows_by_client_id(conn, [client_id])
            if client_id in existing:  # a retry: answer as the first time
                return int(existing[client_id]["id"])
            if isinstance(target, str):
                self._lock_sample(conn, target)
                decision_id = self._latest_effective(conn, target, reviewer if own else None)
            else:
                decision_id = int(target)
                self._check_undoable(conn, decision_id)
            row = validate_decision({"client_id": client_id, "kind": "undo", "undoes": decision_id,
                             "reviewer": reviewer, "note": note}, None, 0)
            return self._insert(conn, [row])[0]

    def _lock_sample(self, conn: Connection, sample_id: str) -> None:
        if self.dialect == "postgresql":  # SQLite's BEGIN IMMEDIATE already serialises writers
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(sample_id)})

    def _sample_log(self, conn: Connection, sample_id: str) -> pd.DataFrame:
        t = decisions_table
        return log_frame(conn.execute(self._log_query().where(t.c.sample_id == sample_id)))

    def _log_query(self) -> sa.Select:
        """SELECT of the log columns by id; on SQLite the timestamp comes back as its stored text,
        parsed once for the whole column by pandas (per-row parsing was most of the read time)."""
        t = decisions_table
        columns = [t.c[name] for name in DECISION_COLUMNS]
        if self.dialect == "sqlite":
            columns[DECISION_COLUMNS.index("created_at")] = sa.type_coerce(t.c.created_at, sa.String).label("created_at")
        return sa.select(*columns).order_by(t.c.id)

    def _latest_effective(self, conn: Connection, sample_id: str, reviewer: str | None) -> int:
        log = self._sample_log(conn, sample_id)
        live = log[effective_mask(log) & (log["kind"] != "undo").to_numpy()]
        if reviewer is not None:
            live = live[live["reviewer"] == reviewer]
        if live.empty:
            who = f" by {reviewer!r}" if reviewer is not None else ""
            raise ValueError(f"nothing to undo for sample {sample_id!r}{who}")
        return int(live["id"].iloc[-1])

    def _check_undoable(self, conn: Connection, decision_id: int) -> str:
        t = decisions_table
        sample_id = conn.execute(sa.select(t.c.sample_id).where(t.c.id == decision_id)).scalar()
        if sample_id is None:
            raise ValueError(f"decision {decision_id} does not exist")
        self._lock_sample(conn, sample_id)
        log = self._sample_log(conn, sample_id)
        effective = dict(zip(log["id"].tolist(), effective_mask(log).tolist()))
        if not effective[decision_id]:
            undone_by = log.loc[(log["undoes"] == decision_id).fillna(False).to_numpy(), "id"].tolist()
            raise ValueError(f"decision {decision_id} is already undone (by {undone_by}): "
                             f"undo that undo to restore it")
        return sample_id

    # -- reading ---------------------------------------------------------------------------------

    def decisions(self, since_id: int | None = None) -> pd.DataFrame:
        """The log (rows with ``id > since_id``, all when None), by id.

        Columns: id, client_id, sample_id, kind, label, reviewer, created_at (UTC), undoes (Int64),
        note, view. Example: ``store.decisions(since_id=40)`` -> the rows written after row 40.
        """
        t = decisions_table
        query = self._log_query()
        if since_id is not None:
            query = query.where(t.c.id > int(since_id))
        with unavailable_as_error(self.url), self.engine.connect() as conn:
            return log_frame(conn.execute(query))

    def last_id(self) -> int:
        """The id of the latest decision (0 when none): a cheap "did anything change?" check. Ids become
        visible in increasing order whatever server wrote them: none below it appears later."""
        with unavailable_as_error(self.url), self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(decisions_table.c.id))).scalar() or 0)

    def current_state(self, samples: pd.DataFrame) -> pd.DataFrame:
        """The state of each sample from the log, class renames and merges applied (:mod:`mlfix.review.classes`)."""
        return classes.store_state(self, samples)

    def corrected_labels(self, samples: pd.DataFrame) -> pd.DataFrame:
        """Export table: sample_id, [path], original_label, corrected_label, changed (bool).

        One row per row of ``samples`` (DataFrame[sample_id, label, path?]), in its order.
        """
        from mlfix.review.export import export_table  # one export table for the store, the project and the page

        columns = ["sample_id", "path", "original_label", "corrected_label", "changed"]
        table = export_table(samples, self.current_state(samples))
        return table[[c for c in columns if c != "path" or "path" in samples.columns]].reset_index(drop=True)

    def per_reviewer(self) -> pd.DataFrame:
        """One row per reviewer: decisions, relabel, flag, ok, undo, duplicate (counts), effective (their
        non-undo decisions still in force), samples (distinct), first_at, last_at."""
        return reviewer_summary(self.decisions())

    def conflicts(self, samples: pd.DataFrame) -> pd.DataFrame:
        """Samples where reviewers' latest effective decisions disagree; see :func:`find_conflicts`."""
        return find_conflicts(*classes.store_inputs(self, samples))

    def final_labels(self, samples: pd.DataFrame, rule: str = "latest", admins: Collection[str] = ()) -> pd.DataFrame:
        """The final label of each sample under a rule for disagreements; see :func:`final_labels`."""
        return final_labels(*classes.store_inputs(self, samples), rule, admins)

    def final_state(self, samples: pd.DataFrame, rule: str = "latest", admins: Collection[str] = ()) -> pd.DataFrame:
        """:meth:`current_state` with ``label`` decided by ``rule`` (input for ``export.export_table``)."""
        return final_state(*classes.store_inputs(self, samples), rule, admins)

