"""Apply a batch of review-grid actions to the decisions store, each exactly once.

The grid (browser side) numbers every action it makes with a sequence number ``seq`` (1, 2, 3, ...
per page load, the page load being a ``session`` uuid) and a ``client_id`` (a uuid made in the
browser). It resends every action Python has not acknowledged yet in one batch, so a lost or
repeated message loses nothing and stores nothing twice:

- :class:`BatchApplier` remembers the highest ``seq`` applied per browser session and skips the
  rest (a resent batch);
- each stored row carries ``client_id:sample_id`` as its client id, which the store keeps unique
  (a batch resent after a server restart, when the applier's memory is gone, is still stored once).

Batch shape (JSON from the browser)::

    {"session": "<uuid>",
     "actions": [{"seq": 7, "client_id": "<uuid>", "kind": "relabel", "ids": ["a/1.png", "a/2.png"],
                  "label": "cat"},
                 {"seq": 8, "client_id": "<uuid>", "kind": "page", "delta": 1}]}

``kind`` is ``relabel`` (needs ``label``, one of the project's labels), ``flag`` (wrong, no new
label), ``ok`` (checked and fine), ``undo`` (with ``undoes``, the client id of an earlier grid
action: reverts exactly the decisions that action stored; without it, the reviewer's latest
decision on each id) or ``page`` (``delta`` pages forward or back; not stored). An action that cannot be applied (unknown label,
unknown sample) is acknowledged with a clear error and nothing of it is stored.

Example:
    >>> applier = BatchApplier()
    >>> result = applier.apply({"session": "s", "actions": [
    ...     {"seq": 1, "client_id": "c1", "kind": "ok", "ids": ["a.png"]}]},
    ...     store=None, labels=["cat", "dog"], reviewer="ann")
    >>> result.ack, [r["kind"] for r in result.records]
    (1, ['ok'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection
from mlfix.errors import BatchError

DECISION_KINDS = ("relabel", "flag", "ok", "undo")
NAVIGATION_KINDS = ("page",)
MAX_IDS_PER_ACTION = 5000


@dataclass(frozen=True)
class Action:
    """One grid action. ``sample_ids`` is empty for ``page``; ``label`` only for ``relabel``."""

    seq: int
    client_id: str
    kind: str
    sample_ids: tuple[str, ...] = ()
    label: str | None = None
    delta: int = 0
    undoes: str | None = None  # undo: the client id of the grid action it reverts


@dataclass
class BatchResult:
    """What one call of :meth:`BatchApplier.apply` did.

    ``ack`` is the highest sequence number now handled for the batch's session (stored, refused
    with an error, or skipped as already applied); the grid drops its pending actions up to it.
    """

    session: str
    ack: int = 0
    applied: list[Action] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # seqs already applied before
    records: list[dict] = field(default_factory=list)  # rows given to the store
    errors: list[str] = field(default_factory=list)
    page_delta: int = 0

    @property
    def changed(self) -> bool:
        """True when a decision was stored (the page must re-read the store)."""
        return bool(self.records)


def parse_batch(payload: Any) -> tuple[str, list[Action], list[str]]:
    """Check a batch from the browser: ``(session, actions sorted by seq, errors)``.

    Malformed single actions become messages in ``errors`` (their seq, when readable, is still
    acknowledged by the caller); a payload that is not a batch at all raises :class:`BatchError`.
    """
    if not isinstance(payload, dict):
        raise BatchError(f"a batch must be a JSON object with 'session' and 'actions', got "
                         f"{type(payload).__name__}")
    session = payload.get("session")
    if not isinstance(session, str) or not session:
        raise BatchError("the batch has no 'session' id (a non-empty string made by the grid)")
    raw = payload.get("actions")
    if not isinstance(raw, list):
        raise BatchError("the batch's 'actions' must be a list")
    actions, errors = [], []
    for item in raw:
        try:
            actions.append(_parse_action(item))
        except ValueError as err:
            errors.append(str(err))
    actions.sort(key=lambda a: a.seq)
    return session, actions, errors


def _parse_action(item: Any) -> Action:
    if not isinstance(item, dict):
        raise ValueError(f"an action must be an object, got {item!r}")
    seq = item.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError(f"an action needs an integer 'seq' >= 1, got {seq!r}")
    kind = item.get("kind")
    if kind not in DECISION_KINDS + NAVIGATION_KINDS:
        raise ValueError(f"action {seq}: unknown kind {kind!r}; expected one of "
                         f"{', '.join(DECISION_KINDS + NAVIGATION_KINDS)}")
    client_id = item.get("client_id")
    if not isinstance(client_id, str) or not client_id or len(client_id) > 100:
        raise ValueError(f"action {seq}: 'client_id' must be a non-empty string (a uuid)")
    if kind == "page":
        delta = item.get("delta", 0)
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise ValueError(f"action {seq}: 'delta' must be an integer")
        return Action(seq, client_id, kind, delta=delta)
    ids = item.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(s, str) and s for s in ids):
        raise ValueError(f"action {seq}: 'ids' must be a non-empty list of sample ids")
    if len(ids) > MAX_IDS_PER_ACTION:
        raise ValueError(f"action {seq}: {len(ids)} ids in one action; at most {MAX_IDS_PER_ACTION}")
    label = item.get("label")
    if kind == "relabel" and (not isinstance(label, str) or not label):
        raise ValueError(f"action {seq}: a relabel needs a 'label'")
    undoes = item.get("undoes") if kind == "undo" else None
    if undoes is not None and (not isinstance(undoes, str) or not undoes or len(undoes) > 100):
        raise ValueError(f"action {seq}: 'undoes' must be the client id of an earlier action")
    return Action(seq, client_id, kind, tuple(dict.fromkeys(ids)), label if kind == "relabel" else None,
                  undoes=undoes)


def action_records(action: Action, reviewer: str, view: str | None = None) -> list[dict]:
    """The store rows of one decision action: one per sample, client id ``<client_id>:<sample_id>``
    (``view``: the published view the reviewer was looking at, kept with the decision)."""
    extra = {"view": view} if view else {}
    return [{"client_id": f"{action.client_id}:{sample_id}", "sample_id": sample_id,
             "kind": action.kind, "label": action.label, "reviewer": reviewer, **extra}
            for sample_id in action.sample_ids]


class BatchApplier:
    """Applies grid batches exactly once; keep one per browser tab (Streamlit session state).

    ``apply(payload, store, labels, reviewer, known_ids=None)``: ``store`` is a
    :class:`mlfix.review.store.ReviewStore` (``record``, ``decisions``, ``undo``), or None to only compute
    the records; ``labels`` are the allowed new labels; ``known_ids`` (a set, or a function
    id -> bool), when given, refuses actions on samples the project does not have; ``view``, the
    name of the published view on screen, is stored with each decision.

    Decisions are written in as few transactions as possible: consecutive relabel/flag/ok actions
    go in one :meth:`record` call; an undo first writes what precedes it (it may undo an action of
    the same batch), then finds the decisions it reverts by their client ids.
    """

    def __init__(self) -> None:
        self.last_seq: dict[str, int] = {}

    def apply(self, payload: Any, store, labels: Collection[str], reviewer: str,
              known_ids: Collection[str] | Callable[[str], bool] | None = None,
              view: str | None = None) -> BatchResult:
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ValueError("reviewer must be a non-empty name (set it in the sidebar)")
        reviewer = reviewer.strip()
        session, actions, errors = parse_batch(payload)
        last = self.last_seq.get(session, 0)
        result = BatchResult(session=session, ack=last, errors=list(errors))
        allowed = set(labels)
        is_known = _membership(known_ids)
        waiting: list[dict] = []  # records not written yet
        waiting_upto = last

        def flush() -> None:
            # Remember a seq only once the store has its rows: a failed write is resent by the grid.
            if waiting and store is not None:
                store.record(waiting)
            waiting.clear()
            self.last_seq[session] = waiting_upto

        for action in actions:
            if action.seq <= last:
                result.skipped.append(action.seq)
                continue
            problem = _problem(action, allowed, is_known)
            if problem:
                result.errors.append(problem)
            elif action.kind == "page":
                result.page_delta += action.delta
                result.applied.append(action)
            elif action.kind == "undo":
                flush()
                rows, undo_errors = undo_records(action, store, reviewer)
                result.errors.extend(undo_errors)
                waiting.extend(rows)
                result.records.extend(rows)
                result.applied.append(action)
            else:
                rows = action_records(action, reviewer, view)
                waiting.extend(rows)
                result.records.extend(rows)
                result.applied.append(action)
            result.ack = max(result.ack, action.seq)
            waiting_upto = result.ack
        flush()
        return result


def undo_records(action: Action, store, reviewer: str) -> tuple[list[dict], list[str]]:
    """The undo rows of an undo action, and messages for samples with nothing to undo.

    With ``undoes`` (the client id of the grid action being undone) each sample's decision made by
    that action is reverted, exactly. Without it, each sample's latest decision by ``reviewer``.
    """
    if store is None:
        return [], []
    if action.undoes:
        wanted = {f"{action.undoes}:{s}": s for s in action.sample_ids}
        log = store.decisions()
        found = log[log["client_id"].isin(list(wanted))]
        ids = dict(zip(found["client_id"], found["id"].astype(int)))
        rows = [{"client_id": f"{action.client_id}:{sample}", "sample_id": sample, "kind": "undo",
                 "undoes": ids[cid], "reviewer": reviewer} for cid, sample in wanted.items() if cid in ids]
        missing = [sample for cid, sample in wanted.items() if cid not in ids]
        errors = [f"nothing to undo for {len(missing)} image(s) ({missing[0]!r}...): that action was "
                  f"not stored"] if missing else []
        return rows, errors
    rows, missing = [], []
    for sample in action.sample_ids:  # one transaction each: the store picks the target under its lock
        try:
            store.undo(sample, reviewer=reviewer, own=True, client_id=f"{action.client_id}:{sample}")
        except ValueError:
            missing.append(sample)
    errors = [f"nothing of yours to undo on {len(missing)} image(s) ({missing[0]!r}...)"] if missing else []
    return rows, errors


def _problem(action: Action, allowed: set[str], is_known: Callable[[str], bool] | None) -> str | None:
    if action.kind == "relabel" and action.label not in allowed:
        shown = ", ".join(sorted(allowed)[:12]) + (" ..." if len(allowed) > 12 else "")
        return (f"'{action.label}' is not a label of this project, so nothing was stored; "
                f"choose one of the palette: {shown}")
    if is_known is not None:
        unknown = [s for s in action.sample_ids if not is_known(s)]
        if unknown:
            return (f"{len(unknown)} image(s) are not in this project ({unknown[0]!r}...), so "
                    f"nothing of that {action.kind} was stored; reload the page")
    return None


def _membership(known: Collection[str] | Callable[[str], bool] | None) -> Callable[[str], bool] | None:
    if known is None:
        return None
    if callable(known):
        return known
    known_set = known if isinstance(known, (set, frozenset, dict)) else set(known)
    return known_set.__contains__
