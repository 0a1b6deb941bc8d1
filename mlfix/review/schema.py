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

from mlfix.review.database import UTCDateTime
from mlfix.review.log import DECISION_COLUMNS, KINDS

ALLOWED_KEYS = {"client_id", "sample_id", "kind", "label", "reviewer", "undoes", "note", "view"}
_IDENTITY = ("sample_id", "kind", "label", "reviewer", "undoes")  # what makes two rows the same decision

metadata = sa.MetaData()
decisions_table = sa.Table(
    "decisions", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("client_id", sa.String(200), nullable=False, unique=True),
    sa.Column("sample_id", sa.Text, nullable=False, index=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("label", sa.Text, nullable=True),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("undoes", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
              sa.ForeignKey("decisions.id"), nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("view", sa.Text, nullable=True),
    # The same rules as validate_decision(), kept by the database against any other writer.
    sa.CheckConstraint("kind IN ('relabel', 'flag', 'ok', 'undo')", name="decisions_kind"),
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
