"""Apply a batch of review-grid actions to the decisions store, each exactly once.

The grid (browser side) numbers every action it makes with a sequence number ``seq`` (1, 2, 3, ...
per page load, the page load being a ``session`` uuid) and a ``client_id`` (a uuid made in the
browser). It resends every action Python has not acknowledged yet in one batch, so a lost or
repeated message loses nothing and stores nothing twice:

- :class:`BatchApplier` remembers the highest ``seq`` applied per browser session and skips the
  rest (a resent batch);
- each stored row carries :func:`row_client_id` (``client_id:sample_id``, or a digest of a long
  sample id) as its client id, which the store keeps unique (a batch resent after a server
  restart, when the applier's memory is gone, is still stored once).

Batch shape (JSON from the browser)::

    {"session": "<uuid>",
     "actions": [{"seq": 7, "client_id": "<uuid>", "kind": "relabel", "ids": ["a/1.png", "a/2.png"],
                  "label": "cat", "by": "<reviewer tag>"},
                 {"seq": 8, "client_id": "<uuid>", "kind": "page", "delta": 1}]}

``kind`` is ``relabel`` (needs ``label``, one of the project's labels), ``flag`` (wrong, no new
label), ``ok`` (checked and fine), ``duplicate`` (a copy of a kept image: the Duplicates page),
``undo`` (with ``undoes``, the client id of an earlier grid
action: reverts exactly the decisions that action stored; without it, the reviewer's latest
decision on each id) or ``page`` (``delta`` pages forward or back; not stored). ``by`` is the
:func:`~mlfix.review.guard.reviewer_tag` the grid was rendered with when the action was made.

One bad action never blocks the others: an action that cannot be applied (unknown label, unknown
sample, an image not shown to this tab, too many ids, made by another reviewer, refused by the
store) is acknowledged with a clear error, nothing of it is stored, and the rest of the batch
goes on. Over the limits of :mod:`mlfix.limits` (actions per batch, decisions per reviewer per
minute) the surplus is *not* acknowledged: the grid keeps it and sends it again later, so an
honest burst is delayed, never lost. Every refusal is a line in the server log.

Example:
    >>> applier = BatchApplier()
    >>> result = applier.apply({"session": "s", "actions": [
    ...     {"seq": 1, "client_id": "c1", "kind": "ok", "ids": ["a.png"]}]},
    ...     store=None, labels=["cat", "dog"], reviewer="ann")
    >>> result.ack, [r["kind"] for r in result.records]
    (1, ['ok'])
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import sqlalchemy as sa

from mlfix import limits as _limits
from mlfix.errors import BatchError, StoreUnavailable
from mlfix.review.guard import ActionChecks, RateLimiter, log, membership, reviewer_tag, short

DECISION_KINDS = ("relabel", "flag", "ok", "undo", "duplicate")
NAVIGATION_KINDS = ("page",)
MAX_CLIENT_ID = 100  # the browser's uuid
MAX_ROW_CLIENT_ID = 200  # the store's limit on a row's client id
DIGEST_MARK = "sha256="  # a row client id naming its sample by digest


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
    by: str | None = None  # the reviewer tag the grid stamped on it (None: a client that says nothing)
    malformed: str | None = None  # why an action with a readable seq cannot be read (refused, acknowledged)


@dataclass
class BatchResult:
    """What one call of :meth:`BatchApplier.apply` did.

    ``ack`` is the highest sequence number now handled for the batch's session (stored, refused
    with an error, or skipped as already applied); the grid drops its pending actions up to it.
    ``deferred``: seqs left for a later batch (over a limit): not acknowledged, resent by the grid.
    """

    session: str
    ack: int = 0
    applied: list[Action] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # seqs already applied before
    records: list[dict] = field(default_factory=list)  # rows given to the store
    errors: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # seqs acknowledged with an error
    deferred: list[int] = field(default_factory=list)
    page_delta: int = 0

    @property
    def changed(self) -> bool:
        """True when a decision was stored (the page must re-read the store)."""
        return bool(self.records)


def row_client_id(client_id: str, sample_id: str) -> str:
    """The client id of the stored row of one sample of an action: ``client_id:sample_id``, or
    ``client_id:sha256=<hex digest of the sample id>`` when that would be longer than the store
    allows (or the sample id itself starts with the mark), so real long paths are stored, once.

    >>> row_client_id("c1", "cats/1.png")
    'c1:cats/1.png'
    >>> row = row_client_id("c1", "x" * 1000); len(row), row[:10]
    (74, 'c1:sha256=')
    """
    plain = f"{client_id}:{sample_id}"
    if len(plain) <= MAX_ROW_CLIENT_ID and not sample_id.startswith(DIGEST_MARK):
        return plain
    digest = hashlib.sha256(sample_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{client_id}:{DIGEST_MARK}{digest}"


def parse_batch(payload: Any, limits: _limits.Limits | None = None) -> tuple[str, list[Action], list[str]]:
    """Check a batch from the browser: ``(session, actions sorted by seq, errors)``.

    Malformed single actions become messages in ``errors`` (their seq, when readable, is still
    acknowledged by :class:`BatchApplier`); a payload that is not a batch at all raises :class:`BatchError`.
    """
    session, actions, errors = _parse(payload, limits or _limits.current())
    return (session, [a for a in actions if a.malformed is None],
            errors + [a.malformed for a in actions if a.malformed is not None])


def _parse(payload: Any, limits: _limits.Limits) -> tuple[str, list[Action], list[str]]:
    """:func:`parse_batch`, keeping the malformed actions whose seq is readable (``malformed`` set)."""
    if not isinstance(payload, dict):
        raise BatchError(f"a batch must be a JSON object with 'session' and 'actions', got "
                         f"{type(payload).__name__}")
    session = payload.get("session")
    if not isinstance(session, str) or not session or len(session) > MAX_CLIENT_ID:
        raise BatchError("the batch has no 'session' id (a non-empty string made by the grid)")
    raw = payload.get("actions")
    if not isinstance(raw, list):
        raise BatchError("the batch's 'actions' must be a list")
    actions, errors, seen = [], [], set()
    for item in raw:
        try:
            action = _parse_action(item, limits.ids_per_action)
        except ValueError as err:
            seq = item.get("seq") if isinstance(item, dict) else None
            if _int(seq) and 1 <= seq < 2**53 and seq not in seen:
                seen.add(seq)
                actions.append(Action(seq, "", "malformed", malformed=str(err)))
            else:
                errors.append(str(err))
            continue
        if action.seq in seen:
            errors.append(f"action {action.seq}: the same seq twice in one batch; the second was not stored")
            continue
        seen.add(action.seq)
        actions.append(action)
    actions.sort(key=lambda a: a.seq)
    return session, actions, errors


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_action(item: Any, max_ids: int) -> Action:
    if not isinstance(item, dict):
        raise ValueError(f"an action must be an object, got {short(item)}")
    seq = item.get("seq")
    if not _int(seq) or not 1 <= seq < 2**53:
        raise ValueError(f"an action needs an integer 'seq' >= 1, got {short(seq)}")
    kind = item.get("kind")
    if not isinstance(kind, str) or kind not in DECISION_KINDS + NAVIGATION_KINDS:
        raise ValueError(f"action {seq}: unknown kind {short(kind)}; expected one of "
                         f"{', '.join(DECISION_KINDS + NAVIGATION_KINDS)}")
    client_id = item.get("client_id")
    if not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID:
        raise ValueError(f"action {seq}: 'client_id' must be a non-empty string (a uuid)")
    by = item.get("by")
    if by is not None and not isinstance(by, str):
        raise ValueError(f"action {seq}: 'by' must be the reviewer tag the grid was given")
    if kind == "page":
        delta = item.get("delta", 0)
        if not _int(delta):
            raise ValueError(f"action {seq}: 'delta' must be an integer")
        return Action(seq, client_id, kind, delta=max(-1_000_000, min(1_000_000, delta)), by=by)
    ids = item.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(s, str) and s for s in ids):
        raise ValueError(f"action {seq}: 'ids' must be a non-empty list of sample ids")
    if len(ids) > max_ids:
        raise ValueError(f"action {seq}: {len(ids)} images in one action; at most {max_ids} "
                         f"({_limits.Limits.env_name('ids_per_action')}), so nothing of it was stored: select fewer")
    label = item.get("label")
    if kind == "relabel" and (not isinstance(label, str) or not label):
        raise ValueError(f"action {seq}: a relabel needs a 'label'")
    undoes = item.get("undoes") if kind == "undo" else None
    if undoes is not None and (not isinstance(undoes, str) or not undoes or len(undoes) > MAX_CLIENT_ID):
        raise ValueError(f"action {seq}: 'undoes' must be the client id of an earlier action")
    return Action(seq, client_id, kind, tuple(dict.fromkeys(ids)), label if kind == "relabel" else None,
                  undoes=undoes, by=by)


def action_records(action: Action, reviewer: str, view: str | None = None) -> list[dict]:
    """The store rows of one decision action: one per sample, client id :func:`row_client_id`
    (``view``: the published view the reviewer was looking at, kept with the decision)."""
    extra = {"view": view} if view else {}
    return [{"client_id": row_client_id(action.client_id, sample_id), "sample_id": sample_id,
             "kind": action.kind, "label": action.label, "reviewer": reviewer, **extra}
            for sample_id in action.sample_ids]


def _is_refusal(error: BaseException) -> bool:
    """A store error about the rows themselves (resending cannot help), not an unavailable database."""
    if isinstance(error, StoreUnavailable):
        return False
    return isinstance(error, (ValueError, TypeError, sa.exc.IntegrityError, sa.exc.DataError))


class BatchApplier:
    """Applies grid batches exactly once; keep one per browser tab (Streamlit session state).

    ``apply(payload, store, labels, reviewer, known_ids=None, view=None, *, shown=None, limits=None,
    rate=None)``: ``store`` is a :class:`mlfix.review.store.ReviewStore` (``record``, ``decisions``,
    ``undo``), or None to only compute the records; ``labels`` are the allowed new labels;
    ``known_ids`` (a set, or a function id -> bool), when given, refuses actions on samples the
    project does not have; ``shown`` (the same), when given, refuses actions on samples the server
    did not show this tab; ``view``, the name of the published view on screen, is stored with each
    decision; ``limits`` (default :func:`mlfix.limits.current`) caps actions per batch and ids per
    action; ``rate`` (a :class:`~mlfix.review.guard.RateLimiter`) caps decisions per reviewer.

    Decisions are written in as few transactions as possible: consecutive relabel/flag/ok/duplicate actions
    go in one :meth:`record` call; an undo first writes what precedes it (it may undo an action of
    the same batch), then finds the decisions it reverts by their client ids. When the store
    refuses such a group, each action of it is written alone, so only the bad one is refused.
    """

    def __init__(self) -> None:
        self.last_seq: dict[str, int] = {}

    def apply(self, payload: Any, store, labels: Collection[str], reviewer: str,
              known_ids: Collection[str] | Callable[[str], bool] | None = None,
              view: str | None = None, *, shown: Collection[str] | Callable[[str], bool] | None = None,
              limits: _limits.Limits | None = None, rate: RateLimiter | None = None) -> BatchResult:
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ValueError("reviewer must be a non-empty name (set it in the sidebar)")
        reviewer = reviewer.strip()
        limits = limits or _limits.current()
        session, actions, errors = _parse(payload, limits)
        for message in errors:
            log.warning("refused a grid action of %s: %s", short(reviewer), message)
        last = self.last_seq.get(session, 0)
        result = BatchResult(session=session, ack=last, errors=list(errors))
        fresh = [a for a in actions if a.seq > last]
        result.skipped = [a.seq for a in actions if a.seq <= last]
        if len(fresh) > limits.actions_per_batch:
            self._defer(result, reviewer, fresh[limits.actions_per_batch:],
                        f"{len(fresh)} actions in one batch; at most {limits.actions_per_batch} are handled "
                        f"at a time ({_limits.Limits.env_name('actions_per_batch')})")
            fresh = fresh[:limits.actions_per_batch]
        checks = ActionChecks(set(labels), membership(known_ids), membership(shown), reviewer_tag(reviewer))
        writer = _Writer(self, store, result, session, reviewer)
        for i, action in enumerate(fresh):
            problem = checks.problem(action)
            if problem is None and rate is not None and action.kind in DECISION_KINDS \
                    and not rate.take(reviewer, len(action.sample_ids)):
                wait = rate.wait_s(reviewer, len(action.sample_ids))
                self._defer(result, reviewer, fresh[i:],
                            f"Slow down: more than {rate.per_minute} decisions a minute "
                            f"({_limits.Limits.env_name('decisions_per_minute')}); try again in about "
                            f"{max(1, round(wait))} s")
                break
            if problem:
                result.errors.append(problem)
                result.refused.append(action.seq)
                log.warning("refused a grid action of %s: %s", short(reviewer), problem)
            elif action.kind == "page":
                result.page_delta += action.delta
                result.applied.append(action)
            elif action.kind == "undo":
                writer.flush()
                rows, undo_errors = undo_records(action, store, reviewer)
                result.errors.extend(undo_errors)
                writer.add(action, rows)
            else:
                writer.add(action, action_records(action, reviewer, view))
            writer.upto = result.ack = max(result.ack, action.seq)
        writer.flush()
        self.last_seq[session] = max(self.last_seq.get(session, 0), result.ack)
        return result

    @staticmethod
    def _defer(result: BatchResult, reviewer: str, later: list[Action], why: str) -> None:
        result.deferred.extend(a.seq for a in later)
        message = f"{why}: {len(later)} action(s) are kept in this tab and sent again shortly"
        result.errors.append(message)
        log.warning("deferred grid actions of %s: %s", short(reviewer), message)


class _Writer:
    """Collects the rows of consecutive actions and writes them in one transaction (see flush)."""

    def __init__(self, applier: BatchApplier, store, result: BatchResult, session: str, reviewer: str) -> None:
        self.applier, self.store, self.result = applier, store, result
        self.session, self.reviewer = session, reviewer
        self.waiting: list[tuple[Action, list[dict]]] = []
        self.upto = result.ack  # the highest seq whose rows are in ``waiting`` or written

    def add(self, action: Action, rows: list[dict]) -> None:
        self.waiting.append((action, rows))

    def flush(self) -> None:
        """Write what waits; remember its seq only once the store has it (a failed write is resent)."""
        if self.waiting and self.store is not None:
            rows = [r for _, group in self.waiting for r in group]
            try:
                if rows:
                    self.store.record(rows)
                done = self.waiting
            except Exception as error:
                if not _is_refusal(error):
                    raise
                done = [(a, g) for a, g in self.waiting if self._alone(a, g)]
        else:
            done = self.waiting
        for action, group in done:
            self.result.records.extend(group)
            self.result.applied.append(action)
        self.waiting = []
        self.applier.last_seq[self.session] = max(self.applier.last_seq.get(self.session, 0), self.upto)

    def _alone(self, action: Action, rows: list[dict]) -> bool:
        try:
            if rows:
                self.store.record(rows)
            return True
        except Exception as error:
            if not _is_refusal(error):
                raise
            message = (f"action {action.seq} ({action.kind} on {len(action.sample_ids)} image(s)) was refused "
                       f"by the store, so nothing of it was stored: {str(error)[:300]}")
            self.result.errors.append(message)
            self.result.refused.append(action.seq)
            log.warning("refused a grid action of %s: %s", short(self.reviewer), message)
            return False


def undo_records(action: Action, store, reviewer: str) -> tuple[list[dict], list[str]]:
    """The undo rows of an undo action, and messages for samples with nothing to undo.

    With ``undoes`` (the client id of the grid action being undone) each sample's decision made by
    that action (by ``reviewer``) is reverted, exactly. Without it, each sample's latest decision
    by ``reviewer``.
    """
    if store is None:
        return [], []
    if action.undoes:
        wanted = {row_client_id(action.undoes, s): s for s in action.sample_ids}
        log_frame = store.decisions()
        found = log_frame[log_frame["client_id"].isin(list(wanted)) & (log_frame["reviewer"] == reviewer)]
        ids = dict(zip(found["client_id"], found["id"].astype(int)))
        rows = [{"client_id": row_client_id(action.client_id, sample), "sample_id": sample, "kind": "undo",
                 "undoes": ids[cid], "reviewer": reviewer} for cid, sample in wanted.items() if cid in ids]
        missing = [sample for cid, sample in wanted.items() if cid not in ids]
        errors = [f"nothing to undo for {len(missing)} image(s) ({short(missing[0])}...): that action was "
                  f"not stored"] if missing else []
        return rows, errors
    rows, missing = [], []
    for sample in action.sample_ids:  # one transaction each: the store picks the target under its lock
        try:
            store.undo(sample, reviewer=reviewer, own=True, client_id=row_client_id(action.client_id, sample))
        except ValueError:
            missing.append(sample)
    errors = [f"nothing of yours to undo on {len(missing)} image(s) ({short(missing[0])}...)"] if missing else []
    return rows, errors
