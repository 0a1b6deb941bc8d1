"""The decision log as data: what reviewers decided, and the pure derivations over it.

The log is a DataFrame with one row per action of a reviewer (columns :data:`DECISION_COLUMNS`),
as :meth:`mlfix.review.store.ReviewStore.decisions` returns it from the database::

    id  client_id  sample_id        kind     label  reviewer  created_at        undoes
    1   a1f3...    cats/001.png     relabel  dog    alice     2026-11-27 21:40  NULL
    2   77c0...    cats/002.png     ok       NULL   alice     2026-11-27 21:40  NULL
    3   9e2b...    cats/001.png     undo     NULL   alice     2026-11-27 21:41  1

Rows are only ever appended (the store refuses UPDATE and DELETE), so every function here is a
pure function of the log and a samples table (DataFrame[sample_id, label]): no database, no I/O.
The store's reading methods (``current_state``, ``conflicts``, ``per_reviewer``, ``final_labels``,
``final_state``) are these functions applied to the whole log.

Kinds
    ``relabel`` (``label`` = the new label), ``flag`` (something is wrong, the reviewer is not sure
    what), ``ok`` (the label the reviewer saw is right), ``undo`` (``undoes`` = the id it reverts),
    ``duplicate`` (the sample is a copy of another one that is kept: drop it from the data set; its
    label is unchanged, and an export can leave it out).

How undo works (:func:`effective_mask`, :func:`derive_state`)
    * An ``undo`` cancels the decision it points at. An undo can itself be undone: then it is
      cancelled and its target counts again (undo of an undo = redo). Formally, a decision is
      *effective* unless an effective undo points at it; undos always point at earlier ids, so this
      is well defined. Two undos of the same decision cancel it once.
    * The state of a sample is its latest effective non-undo decision (by id): status
      ``relabeled`` / ``flagged`` / ``ok`` / ``duplicate``, or ``unreviewed`` when there is none.
    * The current label is the label of the sample's latest effective ``relabel``, else the original
      label. ``ok``, ``flag`` and ``duplicate`` do not change the label: relabel to ``dog`` then
      ``ok`` means "dog is right" (status ``ok``, label ``dog``). To go back to the original label,
      undo the relabel (or relabel to the original label).

Reviewers who disagree (:func:`reviewer_verdicts`, :func:`find_conflicts`, :func:`final_labels`)
    Each reviewer's verdict on a sample is their latest effective non-undo decision: a relabel names
    its label, an ok the label current when it was given, a flag names none (:data:`FLAG_VERDICT`),
    a duplicate names none either (:data:`DUPLICATE_VERDICT`: "drop this copy"), so ``ok`` by one
    reviewer and ``duplicate`` by another is a conflict (keep it or not), and neither is a vote.
    The final label follows one of :data:`FINAL_RULES`:

    ``admin_wins``  the latest label named by an admin; samples no admin named a label for follow
                    ``majority``.
    ``majority``    the label named by the most reviewers; a tie goes to the tied label named most
                    recently (and is marked, so an admin can look). Flags are not votes.
    ``latest``      the label derived from the whole log (:func:`derive_state`): what the store
                    shows everywhere.

Example::

    state = derive_state(store.decisions(), samples)        # samples: DataFrame[sample_id, label]
    final = final_labels(store.decisions(), samples, "majority")
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

KINDS = ("relabel", "flag", "ok", "undo", "duplicate")
STATUS_OF_KIND = {"relabel": "relabeled", "flag": "flagged", "ok": "ok", "duplicate": "duplicate"}
DECISION_COLUMNS = ["id", "client_id", "sample_id", "kind", "label", "reviewer", "created_at", "undoes",
                    "note", "view"]
STATE_COLUMNS = ["sample_id", "original_label", "label", "status", "reviewer", "decided_at"]
FLAG_VERDICT = "<flagged>"  # what a flag says in conflicts(): "not this label, not sure which"
DUPLICATE_VERDICT = "<duplicate>"  # what a duplicate says: "a copy: drop it", nothing about the label
NO_LABEL_VERDICTS = (FLAG_VERDICT, DUPLICATE_VERDICT)  # verdicts that are not votes for a label
FINAL_RULES = ("latest", "majority", "admin_wins")


def effective_mask(log: pd.DataFrame) -> np.ndarray:
    """Which rows of the log are in force: (N,) bool, aligned with ``log``'s rows.

    A row is effective unless an effective undo points at it. Resolved level by level from the
    rows nobody undid, so the loop runs once per level of undo-of-undo nesting, not per row.
    Example: ids 1 relabel, 2 undo->1, 3 undo->2 gives [True, False, True].
    """
    n = len(log)
    ids = log["id"].to_numpy(np.int64)
    position = pd.Index(ids)
    undoes = pd.array(log["undoes"], dtype="Int64")
    is_undo = (log["kind"].to_numpy() == "undo") & ~np.asarray(undoes.isna(), dtype=bool)
    undo_pos = np.flatnonzero(is_undo)
    target_pos = position.get_indexer(np.asarray(undoes[is_undo], dtype=np.int64)) if undo_pos.size else \
        np.empty(0, np.int64)
    known = target_pos >= 0  # an undo of a row outside this log cannot change it
    undo_pos, target_pos = undo_pos[known], target_pos[known]
    state = np.ones(n, np.int8)  # 1 effective, 0 cancelled, -1 not known yet
    state[target_pos] = -1
    while (state == -1).any():
        pointer_state = state[undo_pos]
        cancelled = np.zeros(n, bool)
        cancelled[target_pos[pointer_state == 1]] = True
        unresolved_pointers = np.bincount(target_pos[pointer_state == -1], minlength=n)
        pending = state == -1
        newly_cancelled = pending & cancelled
        newly_effective = pending & ~cancelled & (unresolved_pointers == 0)
        if not (newly_cancelled | newly_effective).any():
            state[pending] = 1  # a cycle (impossible through record()): keep such rows in force
            break
        state[newly_cancelled] = 0
        state[newly_effective] = 1
    return state == 1


def _check_samples(samples: pd.DataFrame) -> None:
    missing = {"sample_id", "label"} - set(samples.columns)
    if missing:
        raise ValueError(f"samples needs columns sample_id and label; missing {sorted(missing)}")
    if samples["sample_id"].duplicated().any():
        dup = samples.loc[samples["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"samples has duplicate sample_id values (e.g. {dup!r}): one row per sample")


def live_decisions(log: pd.DataFrame) -> pd.DataFrame:
    """Effective non-undo decisions, by id (the decisions in force)."""
    keep = effective_mask(log) & (log["kind"].to_numpy() != "undo")
    return log[keep].sort_values("id", kind="stable")


def derive_state(log: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Current state per sample from a decision log (DataFrame as from ReviewStore.decisions()).

    ``samples``: DataFrame[sample_id, label] (unique sample ids). Returns one row per sample, in
    its order: sample_id, original_label, label (current), status ('unreviewed' | 'relabeled' |
    'flagged' | 'ok'), reviewer and decided_at of the deciding decision (None / NaT when
    unreviewed). Decisions about sample ids not in ``samples`` are ignored.
    """
    _check_samples(samples)
    live = live_decisions(log)
    sample_ids = samples["sample_id"].to_numpy()
    latest = live[~live["sample_id"].duplicated(keep="last").to_numpy()]
    relabels = live[(live["kind"] == "relabel").to_numpy()]
    relabels = relabels[~relabels["sample_id"].duplicated(keep="last").to_numpy()]
    # Look-ups by position instead of merges: a sample with no decision gets position -1.
    at = pd.Index(latest["sample_id"]).get_indexer(sample_ids)
    decided = at >= 0
    relabel_at = pd.Index(relabels["sample_id"]).get_indexer(sample_ids)
    relabeled = relabel_at >= 0
    given = _none_for_missing(samples["label"])  # pd.NA of a string column: every comparison ambiguous
    labels = given.copy()
    labels[relabeled] = relabels["label"].to_numpy(dtype=object)[relabel_at[relabeled]]
    status = np.full(len(sample_ids), "unreviewed", dtype=object)
    status[decided] = latest["kind"].map(STATUS_OF_KIND).to_numpy(dtype=object)[at[decided]]
    reviewer = np.full(len(sample_ids), None, dtype=object)
    reviewer[decided] = latest["reviewer"].to_numpy(dtype=object)[at[decided]]
    decided_at = pd.Series(pd.NaT, index=range(len(sample_ids)), dtype="datetime64[us, UTC]")
    decided_at[decided] = pd.to_datetime(latest["created_at"], utc=True).to_numpy()[at[decided]]
    return pd.DataFrame({"sample_id": sample_ids, "original_label": given,
                         "label": labels, "status": status,
                         # object, so that "no reviewer" is None (a NaN in a str column is truthy)
                         "reviewer": pd.Series(reviewer, dtype=object), "decided_at": decided_at})


def find_conflicts(log: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Samples where two reviewers' latest effective decisions disagree.

    Each reviewer's verdict on a sample is their latest effective non-undo decision: a relabel says
    its label; an ok says the label that was current when it was given (the latest effective
    relabel before it, else the original); a flag says FLAG_VERDICT, a duplicate DUPLICATE_VERDICT.
    A sample is in conflict when its reviewers' verdicts are not all equal. Returns sample_id,
    original_label, label (current), n_reviewers, verdicts ({reviewer: verdict}), in the order of
    ``samples``.
    """
    columns = ["sample_id", "original_label", "label", "n_reviewers", "verdicts"]
    per = reviewer_verdicts(log, samples)
    if per.empty:
        return pd.DataFrame(columns=columns)
    grouped = per.groupby("sample_id")["verdict"]
    disagree = grouped.nunique()
    disputed = set(disagree.index[disagree > 1])
    if not disputed:
        return pd.DataFrame(columns=columns)
    state = derive_state(log, samples[samples["sample_id"].isin(disputed)][["sample_id", "label"]])
    contested = per[per["sample_id"].isin(disputed)]
    verdicts = {s: dict(zip(g["reviewer"], g["verdict"])) for s, g in contested.groupby("sample_id")}
    state["n_reviewers"] = state["sample_id"].map(lambda s: len(verdicts[s]))
    state["verdicts"] = state["sample_id"].map(verdicts)
    return state[["sample_id", "original_label", "label", "n_reviewers", "verdicts"]].reset_index(drop=True)


def reviewer_summary(log: pd.DataFrame) -> pd.DataFrame:
    """Per reviewer: decisions, relabel, flag, ok, undo, duplicate, effective, samples, first_at, last_at."""
    columns = ["reviewer", "decisions", *KINDS, "effective", "samples", "first_at", "last_at"]
    if log.empty:
        return pd.DataFrame(columns=columns)
    log = log.assign(effective=effective_mask(log) & (log["kind"].to_numpy() != "undo"))
    counts = pd.crosstab(log["reviewer"], log["kind"]).reindex(columns=list(KINDS), fill_value=0)
    grouped = log.groupby("reviewer")
    out = pd.DataFrame({"decisions": grouped.size()}).join(counts)
    out["effective"] = grouped["effective"].sum().astype("int64")
    out["samples"] = grouped["sample_id"].nunique()
    out["first_at"] = grouped["created_at"].min()
    out["last_at"] = grouped["created_at"].max()
    return out.reset_index()[columns]


# -- final labels under disagreement ---------------------------------------------------------------

FINAL_COLUMNS = ["sample_id", "original_label", "label", "changed", "basis", "n_reviewers", "conflict", "tie",
                 "votes"]


def reviewer_verdicts(log: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Each reviewer's verdict on each sample: their latest effective non-undo decision.

    A relabel says its label; an ok says the label current when it was given (the latest effective
    relabel before it, else the original); a flag says :data:`FLAG_VERDICT` and a duplicate
    :data:`DUPLICATE_VERDICT` (no label). Returns
    DataFrame[id, sample_id, reviewer, kind, verdict], one row per (sample, reviewer), by id;
    samples not in ``samples`` are left out. The same verdicts as :func:`find_conflicts`.
    """
    _check_samples(samples)
    live = live_decisions(log)
    live = live[live["sample_id"].isin(samples["sample_id"])]
    per = live.drop_duplicates(["sample_id", "reviewer"], keep="last")
    columns = ["id", "sample_id", "reviewer", "kind", "verdict"]
    if per.empty:
        return pd.DataFrame(columns=columns)
    original = pd.Series(samples["label"].to_numpy(dtype=object), index=samples["sample_id"].to_numpy())
    relabels = live.loc[live["kind"] == "relabel", ["id", "sample_id", "label"]].rename(columns={"label": "seen"})
    per = pd.merge_asof(per.sort_values("id"), relabels.sort_values("id"), on="id", by="sample_id",
                        allow_exact_matches=False, direction="backward")
    seen = per["seen"].astype(object).where(per["seen"].notna(), per["sample_id"].map(original))
    verdict = np.where(per["kind"] == "relabel", per["label"].astype(object),
                       np.where(per["kind"] == "ok", seen,
                                np.where(per["kind"] == "duplicate", DUPLICATE_VERDICT, FLAG_VERDICT)))
    per["verdict"] = pd.Series(verdict, index=per.index).astype(str)
    return per[columns].reset_index(drop=True)


def final_labels(log: pd.DataFrame, samples: pd.DataFrame, rule: str = "latest",
                 admins: Collection[str] = ()) -> pd.DataFrame:
    """The final label of each sample when reviewers may disagree, by ``rule``.

    Every reviewer has one verdict per sample (:func:`reviewer_verdicts`: their latest effective
    decision; a flag names no label). Rules:

    ``latest``      the label derived from the whole log (:func:`derive_state`): the latest effective
                    relabel, else the original label. What the store shows everywhere.
    ``majority``    the label named by the most reviewers (an ok votes for the label it confirmed).
                    Ties go to the tied label whose most recent supporting verdict is latest
                    (``tie`` is True so an admin can look). Flags and duplicates are not votes:
                    with those only, the label is the ``latest`` one.
    ``admin_wins``  the latest verdict naming a label by a reviewer in ``admins`` (two admins who
                    disagree: the later wins); samples no admin named a label for follow
                    ``majority``. An admin's flag names no label, so it cannot win.

    Samples nobody decided keep their original label. ``samples``: DataFrame[sample_id, label].
    Returns one row per sample, in its order: sample_id, original_label, label (final), changed,
    basis ('unreviewed' | 'agreed' | 'latest' | 'majority' | 'tie' | 'admin' | 'flagged' | 'duplicate':
    nobody named a label, and all said duplicate),
    n_reviewers, conflict (verdicts differ), tie, votes ({label: reviewers}).

    Example: ann relabels ``a`` to dog, bob and cy relabel it to fox: ``majority`` -> fox (2 votes
    to 1), ``admin_wins`` with ``admins=["ann"]`` -> dog, ``latest`` -> whoever decided last.
    """
    if rule not in FINAL_RULES:
        raise ValueError(f"unknown final-label rule {rule!r}; use one of {list(FINAL_RULES)}")
    state = derive_state(log, samples)
    verdicts = reviewer_verdicts(log, samples)
    n = len(state)
    sample_ids = state["sample_id"].to_numpy()
    position = pd.Index(sample_ids)
    final = _none_for_missing(state["label"])
    basis = np.where(state["status"].to_numpy() == "unreviewed", "unreviewed", "latest").astype(object)
    tie = np.zeros(n, bool)
    n_reviewers = np.zeros(n, np.int64)
    conflict = np.zeros(n, bool)
    votes: list[dict] = [{} for _ in range(n)]
    if len(verdicts):
        at = position.get_indexer(verdicts["sample_id"].to_numpy())
        n_reviewers = np.bincount(at, minlength=n).astype(np.int64)
        distinct = verdicts.drop_duplicates(["sample_id", "verdict"])
        conflict = np.bincount(position.get_indexer(distinct["sample_id"].to_numpy()), minlength=n) > 1
        named = verdicts[~verdicts["verdict"].isin(NO_LABEL_VERDICTS)]
        counted = (named.groupby(["sample_id", "verdict"], sort=False)
                   .agg(n=("id", "size"), last=("id", "max")).reset_index())
        for s, v, k in zip(counted["sample_id"], counted["verdict"], counted["n"]):
            votes[position.get_loc(s)][v] = int(k)
        flag_only = (n_reviewers > 0) & (np.bincount(position.get_indexer(named["sample_id"].to_numpy()),
                                                      minlength=n) == 0)
        flags = np.bincount(position.get_indexer(verdicts.loc[verdicts["verdict"] == FLAG_VERDICT,
                                                                "sample_id"].to_numpy()), minlength=n)
        basis[flag_only] = np.where(flags[flag_only] > 0, "flagged", "duplicate")
        if rule != "latest" and len(counted):
            ranked = counted.sort_values(["sample_id", "n", "last"], ascending=[True, False, False], kind="stable")
            top = ranked.drop_duplicates("sample_id")
            best = top.set_index("sample_id")["n"]
            tied = ranked[ranked["n"].to_numpy() == ranked["sample_id"].map(best).to_numpy()]
            where = position.get_indexer(top["sample_id"].to_numpy())
            final[where] = top["verdict"].to_numpy(dtype=object)
            is_tie = tied.groupby("sample_id").size() > 1
            tie[position.get_indexer(is_tie.index[is_tie.to_numpy()])] = True
            basis[where] = np.where(tie[where], "tie", "majority")
        if rule == "admin_wins" and len(named):
            admin_set = set(admins)
            by_admin = named[named["reviewer"].isin(admin_set)].sort_values("id")
            latest_admin = by_admin.drop_duplicates("sample_id", keep="last")
            where = position.get_indexer(latest_admin["sample_id"].to_numpy())
            final[where] = latest_admin["verdict"].to_numpy(dtype=object)
            basis[where] = "admin"
            tie[where] = False
        basis[(n_reviewers > 0) & ~conflict & ~flag_only] = "agreed"
    original = _none_for_missing(state["original_label"])
    # object columns, so that "no label" stays None (a str column would make it NaN, and NaN != NaN)
    return pd.DataFrame({"sample_id": sample_ids, "original_label": pd.Series(original, dtype=object),
                         "label": pd.Series(final, dtype=object), "changed": final != original, "basis": basis, "n_reviewers": n_reviewers,
                         "conflict": conflict, "tie": tie, "votes": votes})[FINAL_COLUMNS]


def _none_for_missing(labels: pd.Series) -> np.ndarray:
    """Labels as an object array with None for every kind of missing (None, NaN, pd.NA).

    >>> _none_for_missing(pd.Series(["a", None, float("nan")])).tolist()
    ['a', None, None]
    """
    out = labels.to_numpy(dtype=object).copy()
    out[pd.isna(out)] = None
    return out


def final_state(log: pd.DataFrame, samples: pd.DataFrame, rule: str = "latest",
                admins: Collection[str] = ()) -> pd.DataFrame:
    """:func:`derive_state` with the final label of ``rule`` (see :func:`final_labels`).

    The status follows the outcome: ``relabeled`` when the final label differs from the original,
    ``ok`` when a relabel was overruled back to the original label, else the derived status.
    Feed it to ``mlfix.review.export.export_table(samples, state)`` to export under a rule.
    """
    state = derive_state(log, samples)
    if rule == "latest":
        return state
    final = final_labels(log, samples, rule, admins)
    state["label"] = final["label"].to_numpy(dtype=object)
    changed = final["changed"].to_numpy(dtype=bool)
    status = state["status"].to_numpy(dtype=object).copy()
    status[changed] = "relabeled"
    status[~changed & (status == "relabeled")] = "ok"
    state["status"] = status
    return state
