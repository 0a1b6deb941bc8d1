"""The class list of a project: its given labels, plus the classes reviewers add, rename and merge.

The list is kept beside the decisions, in the same database (SQLite or PostgreSQL), as an
append-only log of *class events* (table ``class_events``), each with who and when::

    id  client_id  kind    name   target  reviewer  created_at  after_decision
    1   ...        add     cat    NULL    ann       ...         0
    2   ...        add     dgo    NULL    ann       ...         0
    3   ...        rename  dgo    dog     ann       ...         12
    4   ...        merge   kitty  cat     ann       ...         40

The effective class list (:func:`class_list`) is the given labels, sorted, with the events applied
in order: ``add`` appends a class; ``rename`` puts ``target`` in the place of ``name``; ``merge``
removes ``name`` (its images count as ``target`` from then on). Nothing is rewritten: a rename or a
merge changes what a label *means* (:func:`effective_inputs`). Every given label ``name``, and every
relabel to ``name`` stored before the event (``after_decision``: the last decision id when the event
was stored), reads as ``target``; so a merge never loses a decision. A name freed by a rename or a
merge can be added again, and decisions made after that mean the new class.

Writing checks the event against the list (:func:`apply_event`: a clear error that says what to do);
reading folds the stored events leniently (:func:`fold`: an event that no longer applies, say after
a rescan changed the given labels, is skipped), so the list never holds a name twice.

    >>> class_list(["cat"], [{"kind": "add", "name": "dgo"}, {"kind": "rename", "name": "dgo", "target": "dog"}])
    ['cat', 'dog']
    >>> apply_event(["cat", "dog"], "rename", "cat", "dog")
    Traceback (most recent call last):
    ...
    mlfix.errors.ClassListError: 'dog' is already a class: merge 'cat' into 'dog' instead of renaming it
"""

from __future__ import annotations

import datetime as _dt
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event as sa_event

from mlfix.errors import ClassListError
from mlfix.review.database import UTCDateTime, unavailable_as_error
from mlfix.review.log import derive_state
from mlfix.review.schema import _APPEND_ONLY_DDL as _DECISIONS_DDL
from mlfix.review.schema import metadata

EVENT_KINDS = ("add", "rename", "merge")
EVENT_COLUMNS = ["id", "client_id", "kind", "name", "target", "reviewer", "created_at", "after_decision"]
MAX_NAME = 200

class_events_table = sa.Table(
    "class_events", metadata,  # the decisions' metadata: created with them, in the same database
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("client_id", sa.String(200), nullable=False, unique=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=True),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("after_decision", sa.BigInteger, nullable=False),
    sa.CheckConstraint("kind IN ('add', 'rename', 'merge')", name="class_events_kind"),
    sa.CheckConstraint("(kind = 'add') = (target IS NULL)", name="class_events_target"),
    sa.CheckConstraint("length(name) > 0 AND length(reviewer) > 0", name="class_events_names"),
    sqlite_autoincrement=True,
)

# The same append-only triggers as the decisions' (UPDATE, DELETE, TRUNCATE fail), on this table.
for _dialect, _statements in _DECISIONS_DDL.items():
    for _statement in _statements:
        _statement = _statement.replace("decisions", "class_events").replace("record an undo instead",
                                                                            "add, rename or merge again")
        sa_event.listen(class_events_table, "after_create", sa.DDL(_statement).execute_if(dialect=_dialect))


# -- the list: pure functions of the given labels and the events ---------------------------------

def check_name(name: Any, what: str = "class name") -> str:
    """``name`` stripped, or ClassListError when it is not a usable class name.

    >>> check_name("  dog ")
    'dog'
    """
    if not isinstance(name, str) or not name.strip():
        raise ClassListError(f"a {what} must be a non-empty text, got {name!r}")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise ClassListError(f"a {what} has at most {MAX_NAME} characters; {name[:20]!r}... has {len(name)}")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise ClassListError(f"a {what} cannot hold control characters (line breaks, tabs): {name!r}")
    return name


def apply_event(classes: Sequence[str], kind: str, name: Any, target: Any = None) -> list[str]:
    """The class list after one event, checked strictly; ClassListError says what is wrong and what to do.

    ``add`` a new ``name``; ``rename`` ``name`` to a new ``target``; ``merge`` ``name`` into the
    existing class ``target``.
    """
    classes = list(classes)
    if kind not in EVENT_KINDS:
        raise ClassListError(f"unknown class event {kind!r}; use one of {', '.join(EVENT_KINDS)}")
    name = check_name(name)
    if kind == "add":
        if target is not None:
            raise ClassListError(f"adding a class takes a name only; drop target={target!r}")
        if name in classes:
            raise ClassListError(f"{name!r} is already a class")
        return classes + [name]
    target = check_name(target, "new class name" if kind == "rename" else "class to merge into")
    if name not in classes:
        raise ClassListError(f"{name!r} is not a class; the classes are {classes}")
    if name == target:
        raise ClassListError(f"{name!r} would {kind} into itself: choose another class")
    if kind == "rename":
        if target in classes:
            raise ClassListError(f"{target!r} is already a class: merge {name!r} into {target!r} "
                                 f"instead of renaming it")
        return [target if c == name else c for c in classes]
    if target not in classes:
        raise ClassListError(f"cannot merge into {target!r}: it is not a class; rename {name!r} to it instead")
    return [c for c in classes if c != name]


def fold(base: Iterable[str], events: pd.DataFrame | Sequence[Mapping]) -> tuple[list[str], list[dict]]:
    """(the class list, the events that applied) from the given labels and the stored events, in order.

    Lenient: an ``add`` of a class already there, or a ``rename``/``merge`` of a class that is not,
    is skipped; a rename onto an existing class is a merge. ``after_decision`` is made non-decreasing.
    """
    classes = sorted({str(b) for b in base if b is not None and not pd.isna(b)})
    applied: list[dict] = []
    rows = events.to_dict("records") if isinstance(events, pd.DataFrame) else list(events)
    latest = 0
    for row in rows:
        kind, name, target = row.get("kind"), row.get("name"), _missing_as_none(row.get("target"))
        latest = max(latest, int(row.get("after_decision") or 0))
        if kind == "rename" and target in classes:
            kind = "merge"
        try:
            classes = apply_event(classes, kind, name, target)
        except ClassListError:
            continue
        applied.append({"kind": kind, "name": name, "target": target, "after_decision": latest})
    return classes, applied


def _missing_as_none(value: Any) -> Any:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def class_list(base: Iterable[str], events: pd.DataFrame | Sequence[Mapping]) -> list[str]:
    """The effective class list: the given labels (sorted), then the events applied in order."""
    return fold(base, events)[0]


def _trace(label: Any, applied: Sequence[dict]) -> Any:
    """What ``label`` means after ``applied`` (renames and merges followed in order)."""
    for e in applied:
        if e["kind"] != "add" and label == e["name"]:
            label = e["target"]
    return label


def effective_inputs(log: pd.DataFrame, samples: pd.DataFrame, events: pd.DataFrame | Sequence[Mapping],
                     base: Iterable[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(log, samples)`` with labels read through the renames and merges (copies; the inputs as
    they are when there are none), ready for the pure functions of :mod:`mlfix.review.log`.

    A given label goes through every event; a relabel decision through the events stored after it.
    ``base``: the project's given labels (default: those of ``samples``).
    """
    given = samples["label"]
    labels = effective_labels(given, events, given if base is None else base)
    if labels is not given:
        samples = samples.assign(label=labels)
    return effective_log(log, events, given if base is None else base), samples


def effective_log(log: pd.DataFrame, events: pd.DataFrame | Sequence[Mapping], base: Iterable[str]) -> pd.DataFrame:
    """The log with each relabel's label read through the renames and merges stored after it (a
    copy; the log itself when there are none). ``base``: the project's given labels."""
    _, applied = fold(base, events)
    relabels = np.flatnonzero(log["kind"].to_numpy() == "relabel")
    if not any(e["kind"] != "add" for e in applied) or not len(relabels):
        return log
    after = np.array([e["after_decision"] for e in applied], dtype=np.int64)
    starts = np.searchsorted(after, log["id"].to_numpy(np.int64)[relabels], side="left").tolist()
    labels = log["label"].to_numpy(dtype=object)[relabels]  # (the first event stored after each decision)
    meaning = {key: _trace(key[1], applied[key[0]:]) for key in set(zip(starts, labels))}
    column = log["label"].to_numpy(dtype=object).copy()
    column[relabels] = [meaning[key] for key in zip(starts, labels)]
    return log.assign(label=column)


def effective_state(log: pd.DataFrame, samples: pd.DataFrame, events: pd.DataFrame | Sequence[Mapping],
                    base: Iterable[str] | None = None) -> pd.DataFrame:
    """:func:`~mlfix.review.log.derive_state` with the renames and merges applied to ``label``;
    ``original_label`` stays the given label."""
    mapped_log, mapped_samples = effective_inputs(log, samples, events, base)
    state = derive_state(mapped_log, mapped_samples)
    state["original_label"] = samples["label"].to_numpy(dtype=object)
    return state


def effective_labels(labels: pd.Series, events: pd.DataFrame | Sequence[Mapping],
                     base: Iterable[str] | None = None) -> pd.Series:
    """Given labels (a Series) as they read after every rename and merge (the Series itself when none)."""
    _, applied = fold(labels if base is None else base, events)
    if not any(e["kind"] != "add" for e in applied):
        return labels
    meaning = {v: _trace(v, applied) for v in pd.unique(labels.dropna().to_numpy(dtype=object))}
    mapped = labels.astype(object).map(meaning)  # a missing label stays missing
    return mapped.where(labels.notna(), None).astype(object)


# -- the store: reading and writing the events ---------------------------------------------------

def read_events(store) -> pd.DataFrame:
    """The class events of a :class:`~mlfix.review.store.ReviewStore`, by id (columns :data:`EVENT_COLUMNS`)."""
    t = class_events_table
    with unavailable_as_error(store.url), store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(*[t.c[c] for c in EVENT_COLUMNS]).order_by(t.c.id))]
    frame = pd.DataFrame.from_records(rows, columns=EVENT_COLUMNS)
    frame["id"] = frame["id"].astype("int64")
    frame["after_decision"] = frame["after_decision"].astype("int64")
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    for column in ("client_id", "kind", "name", "target", "reviewer"):  # object: a missing target is None
        frame[column] = pd.Series([None if pd.isna(v) else v for v in frame[column]], dtype=object)
    return frame


def record_event(store, base: Iterable[str], kind: str, name: Any, target: Any = None, *, reviewer: str,
                 client_id: str | None = None) -> list[str]:
    """Store one class event (checked against the current list in the same transaction); return the
    new class list. A retried ``client_id`` stores nothing new. ClassListError when it does not apply.

    Example: ``record_event(store, project.labels, "rename", "dgo", "dog", reviewer="ann")``
    """
    name = check_name(name)
    target = None if target is None else check_name(target, "target class")
    if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer.strip()) > 200:
        raise ClassListError(f"a class change needs the reviewer's name (1-200 characters), got {reviewer!r}")
    if client_id is not None and (not isinstance(client_id, str) or not client_id or len(client_id) > 200):
        raise ClassListError(f"client_id must be a non-empty str of at most 200 characters, got {client_id!r}")
    client_id = client_id or uuid.uuid4().hex
    base = list(base)
    t = class_events_table
    with store._write() as conn:
        if store.dialect == "postgresql":  # waits for decisions in flight; one class change at a time
            conn.execute(sa.text("LOCK TABLE decisions IN SHARE ROW EXCLUSIVE MODE"))
        events = [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.id)).mappings()]
        retry = next((e for e in events if e["client_id"] == client_id), None)
        if retry is not None:
            if (retry["kind"], retry["name"], retry["target"]) != (kind, name, target):
                raise ClassListError(f"client_id {client_id!r} was already used for another class change: "
                                     f"make a new client id per change")
            return class_list(base, events)
        classes = apply_event(class_list(base, events), kind, name, target)
        last = conn.execute(sa.text("SELECT max(id) FROM decisions")).scalar() or 0
        conn.execute(t.insert().values(client_id=client_id, kind=kind, name=name, target=target,
                                       reviewer=reviewer.strip(), after_decision=int(last),
                                       created_at=_dt.datetime.now(_dt.timezone.utc)))
    return classes


class ProjectClasses:
    """The class list of one project's store: ``names``, ``events``, and ``add``, ``rename``, ``merge``
    (each returns the new list). ``base``: the project's given labels.

    Example: ``project.classes.add("dog", reviewer="ann")``; ``project.classes.names -> ['cat', 'dog']``
    """

    def __init__(self, store, base: Iterable[str]):
        self.store, self.base = store, list(base)

    @property
    def events(self) -> pd.DataFrame:
        """Every class event, by id: who added, renamed or merged what, and when."""
        return read_events(self.store)

    @property
    def names(self) -> list[str]:
        """The effective class list (the palette of the grid, the labels a relabel may use)."""
        return class_list(self.base, self.events)

    def add(self, name: str, *, reviewer: str, client_id: str | None = None) -> list[str]:
        return record_event(self.store, self.base, "add", name, reviewer=reviewer, client_id=client_id)

    def rename(self, name: str, new_name: str, *, reviewer: str, client_id: str | None = None) -> list[str]:
        return record_event(self.store, self.base, "rename", name, new_name, reviewer=reviewer, client_id=client_id)

    def merge(self, name: str, into: str, *, reviewer: str, client_id: str | None = None) -> list[str]:
        return record_event(self.store, self.base, "merge", name, into, reviewer=reviewer, client_id=client_id)

    def __repr__(self) -> str:
        return f"ProjectClasses({self.names!r})"


def version(store) -> int:
    """The id of the latest class event (0 when none): a cheap "did the class list change?" check."""
    with unavailable_as_error(store.url), store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(class_events_table.c.id))).scalar() or 0)


def export_info(store, base: Iterable[str]) -> dict:
    """:func:`export_record` of a store's class events (``base``: the project's given labels)."""
    events = read_events(store)
    return export_record(events, class_list(base, events))


def export_record(events: pd.DataFrame, classes: Sequence[str]) -> dict:
    """What an export says about the classes: ``{"classes": [...], "class_events": [{...}]}``."""
    records = []
    for row in events.to_dict("records"):
        stamp = row.get("created_at")
        records.append({"kind": row["kind"], "name": row["name"], "target": _missing_as_none(row.get("target")),
                        "reviewer": row["reviewer"], "created_at": None if pd.isna(stamp) else stamp.isoformat()})
    return {"classes": list(classes), "class_events": records}


def store_inputs(store, samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`effective_inputs` of a store's log and class events (its ``labels`` as the given labels)."""
    return effective_inputs(store.decisions(), samples, read_events(store), store.labels)


def allowed_labels(store) -> frozenset | None:
    """The labels a relabel may use in a store made with ``labels=`` (its effective class list); None: any."""
    return None if store.labels is None else frozenset(class_list(store.labels, read_events(store)))


def store_state(store, samples: pd.DataFrame) -> pd.DataFrame:
    """:func:`effective_state` of a store's log and class events (``ReviewStore.current_state``)."""
    return effective_state(store.decisions(), samples, read_events(store), store.labels)
