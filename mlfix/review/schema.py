"""The ``decisions`` table: its columns, the rules a row must follow, the append-only triggers, and
how rows read back as the log DataFrame of :mod:`mlfix.review.log`.

The rules are kept twice on purpose: :func:`validate_decision` checks each row in Python and says
which decision is wrong and how to fix it; the table's CHECK constraints keep the same rules in the
database against any other writer. The database also refuses UPDATE, DELETE (and TRUNCATE on
PostgreSQL) with triggers created with the table: the log is append-only, and an undo is a new row.

    >>> row = validate_decision({"sample_id": "a.png", "kind": "ok", "reviewer": "bob"}, None, 0)
    >>> row["kind"], row["label"], len(row["client_id"])
    ('ok', None, 32)
    >>> validate_decision({"sample_id": "a.png", "kind": "relabel", "reviewer": "bob"}, None, 3)
    Traceback (most recent call last):
    ...
    ValueError: decision 3: a relabel needs the new label (a non-empty str), got None
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event

from mlfix.errors import MlfixError
from mlfix.review.database import UTCDateTime
from mlfix.review.log import DECISION_COLUMNS, KINDS

KIND_LENGTH = 16  # was 8 before the ``duplicate`` kind: :func:`migrate` widens an older table
KIND_CHECK = "kind IN (" + ", ".join(f"'{k}'" for k in KINDS) + ")"
ALLOWED_KEYS = {"client_id", "sample_id", "kind", "label", "reviewer", "undoes", "note", "view"}
_IDENTITY = ("sample_id", "kind", "label", "reviewer", "undoes")  # what makes two rows the same decision

metadata = sa.MetaData()
decisions_table = sa.Table(
    "decisions", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("client_id", sa.String(200), nullable=False, unique=True),
    sa.Column("sample_id", sa.Text, nullable=False, index=True),
    sa.Column("kind", sa.String(KIND_LENGTH), nullable=False),
    sa.Column("label", sa.Text, nullable=True),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("undoes", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
              sa.ForeignKey("decisions.id"), nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("view", sa.Text, nullable=True),
    # The same rules as validate_decision(), kept by the database against any other writer.
    sa.CheckConstraint(KIND_CHECK, name="decisions_kind"),
    sa.CheckConstraint("(kind = 'relabel') = (label IS NOT NULL)", name="decisions_label"),
    sa.CheckConstraint("(kind = 'undo') = (undoes IS NOT NULL)", name="decisions_undoes"),
    sa.CheckConstraint("length(reviewer) > 0", name="decisions_reviewer"),
    sqlite_autoincrement=True,  # ids never reused: the log order is the id order
)

# The log is append-only, and the database says so too: UPDATE and DELETE fail.
_APPEND_ONLY_DDL = {
    "sqlite": [
        "CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions "
        "BEGIN SELECT RAISE(ABORT, 'decisions are append-only: record an undo instead'); END",
        "CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions "
        "BEGIN SELECT RAISE(ABORT, 'decisions are append-only: record an undo instead'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION mlfix_decisions_append_only() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'decisions are append-only: record an undo instead'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER decisions_no_change BEFORE UPDATE OR DELETE ON decisions "
        "FOR EACH ROW EXECUTE FUNCTION mlfix_decisions_append_only()",
        "CREATE TRIGGER decisions_no_truncate BEFORE TRUNCATE ON decisions "
        "FOR EACH STATEMENT EXECUTE FUNCTION mlfix_decisions_append_only()",
    ],
}
for _dialect, _statements in _APPEND_ONLY_DDL.items():
    for _statement in _statements:
        event.listen(decisions_table, "after_create", sa.DDL(_statement).execute_if(dialect=_dialect))


# -- migration of a table made by an older mlfix ------------------------------------------------

_OLD_TABLE = "decisions_before_migration"


def migrate(conn: sa.Connection, dialect: str) -> bool:
    """Bring a ``decisions`` table made by an older mlfix up to this schema, in place; True when it did.

    An older table allows fewer kinds (its ``kind`` column is 8 characters and its CHECK lists
    relabel, flag, ok, undo); nothing else differs. Runs inside the caller's write transaction, so
    the migration happens whole or not at all. PostgreSQL alters the column and the constraint.
    SQLite cannot alter a CHECK: the table is rebuilt (SQLite's documented procedure "making other
    kinds of table schema changes", https://www.sqlite.org/lang_altertable.html): the old table is
    renamed, the new one made (with the indexes and the append-only triggers), every row copied with
    its id, the AUTOINCREMENT counter kept (ids are never reused), indexes or triggers someone else
    added recreated, and the old table dropped. No row is changed or lost.
    """
    if dialect == "postgresql":
        return _migrate_postgresql(conn)
    if dialect == "sqlite":
        return _migrate_sqlite(conn)
    return False


def _migrate_postgresql(conn: sa.Connection) -> bool:
    found = conn.execute(sa.text("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                 "WHERE conrelid = to_regclass('decisions') AND conname = 'decisions_kind'")).scalar()
    if found is None or all(f"'{kind}'" in found for kind in KINDS):
        return False
    conn.exec_driver_sql(f"ALTER TABLE decisions ALTER COLUMN kind TYPE VARCHAR({KIND_LENGTH})")
    conn.exec_driver_sql("ALTER TABLE decisions DROP CONSTRAINT decisions_kind")
    conn.exec_driver_sql(f"ALTER TABLE decisions ADD CONSTRAINT decisions_kind CHECK ({KIND_CHECK})")
    return True


def _migrate_sqlite(conn: sa.Connection) -> bool:
    table_sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master "
                                     "WHERE type = 'table' AND name = 'decisions'").scalar()
    if table_sql is None or all(f"'{kind}'" in table_sql for kind in KINDS):
        return False
    extras = conn.exec_driver_sql("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'decisions' "
                                  "AND type IN ('index', 'trigger') AND sql IS NOT NULL").all()
    counter = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'decisions'").scalar()
    conn.exec_driver_sql(f"ALTER TABLE decisions RENAME TO {_OLD_TABLE}")
    for kind, name, _ in extras:  # their names are taken; the new table gets its own below
        conn.exec_driver_sql(f'DROP {kind.upper()} "{name}"')
    decisions_table.create(conn)  # with its index and the append-only triggers (after_create)
    columns = ", ".join(f'"{c.name}"' for c in decisions_table.columns)
    conn.exec_driver_sql(f"INSERT INTO decisions ({columns}) SELECT {columns} FROM {_OLD_TABLE} ORDER BY id")
    if counter is not None:  # a retried insert consumes an id: keep the counter past it
        conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'decisions'", (int(counter),))
    present = {row[0] for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE tbl_name = 'decisions'")}
    for _, name, sql in extras:
        if name not in present:  # an index or trigger added by hand: kept
            conn.exec_driver_sql(sql)
    conn.exec_driver_sql(f"DROP TABLE {_OLD_TABLE}")
    if conn.exec_driver_sql("PRAGMA foreign_key_check(decisions)").all():  # raising rolls it all back
        raise MlfixError("migrating the decisions table would break undo links, so nothing was changed: "
                         "report this with a copy of reviews.db")
    return True


# -- validation -----------------------------------------------------------------------------------

def validate_decision(decision: Mapping[str, Any], labels: frozenset | None, index: int) -> dict:
    """A clean row for the insert, or ValueError that says which decision and what to fix.

    ``labels``: an allow-list for relabels, or None; ``index``: the decision's place in its batch
    (named in the message). A missing ``client_id`` is made here (a UUID).
    """
    where = f"decision {index}"
    if not isinstance(decision, Mapping):
        raise ValueError(f"{where}: expected a dict with sample_id, kind, reviewer, got {type(decision).__name__}")
    unknown = set(decision) - ALLOWED_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(ALLOWED_KEYS)}")
    kind = decision.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r}; use one of {list(KINDS)}")
    reviewer = decision.get("reviewer")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError(f"{where}: reviewer is empty; pass the reviewer's name")
    label, undoes, sample_id = decision.get("label"), decision.get("undoes"), decision.get("sample_id")
    if kind == "relabel":
        if not isinstance(label, str) or label == "":
            raise ValueError(f"{where}: a relabel needs the new label (a non-empty str), got {label!r}")
        if labels is not None and label not in labels:
            raise ValueError(f"{where}: label {label!r} is not one of the project's labels {sorted(labels)}; "
                             f"an admin adds classes (Review page, Classes; project.classes.add)")
    elif label is not None:
        raise ValueError(f"{where}: only a relabel carries a label; drop label={label!r} for kind {kind!r}")
    if kind == "undo":
        if isinstance(undoes, bool) or not isinstance(undoes, (int, np.integer)):
            raise ValueError(f"{where}: an undo needs undoes=<id of the decision it reverts>, got {undoes!r}")
        undoes = int(undoes)
    elif undoes is not None:
        raise ValueError(f"{where}: only an undo has undoes; drop undoes={undoes!r} for kind {kind!r}")
    if not (isinstance(sample_id, str) and sample_id) and not (kind == "undo" and sample_id is None):
        raise ValueError(f"{where}: sample_id must be a non-empty str, got {sample_id!r}")
    client_id = decision.get("client_id")
    if client_id is None:
        client_id = uuid.uuid4().hex
    elif not isinstance(client_id, str) or not client_id or len(client_id) > 200:
        raise ValueError(f"{where}: client_id must be a non-empty str of at most 200 characters, got {client_id!r}")
    return {"client_id": client_id, "sample_id": sample_id, "kind": kind, "label": label,
            "reviewer": reviewer, "undoes": undoes, "note": decision.get("note"), "view": decision.get("view")}


def check_batch(rows: list[dict]) -> list[dict]:
    """Rows as given; the same client id twice in one batch must be the same decision."""
    first: dict[str, dict] = {}
    for r in rows:
        seen = first.setdefault(r["client_id"], r)
        if seen is not r:
            check_same_decision(r, seen)
    return rows


def check_same_decision(new: dict, stored: Mapping[str, Any]) -> None:
    """ValueError unless ``new`` is the decision ``stored`` under the same client id (a retry)."""
    for key in _IDENTITY:
        if key == "sample_id" and new[key] is None:  # an undo whose sample is filled in from its target
            continue
        if new[key] != stored[key]:
            raise ValueError(f"client_id {new['client_id']!r} was already used for a different decision "
                             f"({key}: {stored[key]!r} stored, {new[key]!r} now): make a new client id per action")


# -- reading the log back ----------------------------------------------------------------------

def log_frame(result) -> pd.DataFrame:
    """Rows of the log query as the log DataFrame of :mod:`mlfix.review.log` (its dtypes)."""
    rows = [tuple(row) for row in result]  # plain tuples: pandas probes Row objects slowly
    frame = pd.DataFrame.from_records(rows, columns=DECISION_COLUMNS)
    frame["id"] = frame["id"].astype("int64")
    frame["undoes"] = frame["undoes"].astype("Int64")
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    for column in ("client_id", "sample_id", "kind", "label", "reviewer", "note", "view"):
        frame[column] = frame[column].astype(object)
    return frame
