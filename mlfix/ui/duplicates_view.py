"""The Duplicates page: each group of exact or near copies side by side, keys to keep one and mark the rest.

The groups come from the scores table (``project.cached_scores()``: columns ``group_duplicates``,
``reason_duplicates``, ``score_duplicates`` and, when present, ``conflict_duplicates``; see
:mod:`mlfix.scoring.duplicates`). Groups whose members carry different labels come first (a label
problem), then groups that span splits (a leak between train and test), then the rest, largest first.

Keys (``st.button(shortcut=...)``): ``1``..``9`` keep that member and mark every other member
``duplicate``; ``n`` / right arrow the next group, ``p`` / left arrow the previous one; ``u`` undoes
this tab's last keep. A keep is a batch of grid actions (kind ``duplicate``, and an ``undo`` for the
kept member when it was marked before) applied by the same :class:`~mlfix.review.actions.BatchApplier`
the Review page uses: the reviewer tag, the images shown to this tab, the rate limit and the
exactly-once rules all hold, the decision is in the store before the page draws again, and the
members on screen are claimed like a page of the Review grid (:func:`mlfix.ui.team.claim_page`).
Only an identity that may ``review`` decides; anyone who may ``view`` sees the groups.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import streamlit as st

from mlfix.data import thumbnails
from mlfix.errors import BatchError, StoreUnavailable
from mlfix.project import Project
from mlfix.review import actions as review_actions
from mlfix.ui import access, team, text
from mlfix.ui.review_data import review_store, sample_tables, score_table, state_of

GROUP_KEY = "mlfix_dup_group"
HISTORY_KEY = "mlfix_dup_history"
APPLIER_KEY = "mlfix_dup_applier"
SESSION_KEY = "mlfix_dup_session"
SEQ_KEY = "mlfix_dup_seq"
SHOWN_KEY = "mlfix_dup_shown"
ERRORS_KEY = "mlfix_dup_errors"
CLAIM_PAGE_KEY = "mlfix_dup_claim_page"
THUMB_SIZE = 192
MAX_KEYS = 9  # members 1..9 have a key; a larger group's others are shown, decided by the buttons
SHOWN_GROUPS = 16  # groups this tab remembers as shown (an undo may touch a group left behind)
GROUP_COLUMNS = ("group_duplicates", "reason_duplicates", "score_duplicates")
NO_INDEX = ("The project is not indexed yet: index it first (the **Training** page, or `mlfix index`), then "
            "compute the scores; duplicate groups come with them.")
NO_SCORES = ("No scores yet: compute them (the **Review** page offers it, or `mlfix scores`); duplicate groups "
             "come with them.")
OLD_SCORES = ("These scores were computed before the duplicates check existed: compute them again (the "
              "**Review** page, or `mlfix scores`) to find duplicates.")
NO_GROUPS = "No duplicates found: no two images are exact or near copies of each other."


# ------------------------------------------------------------------------------------ the groups

def group_members(scores: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """One row per member of a duplicates group, groups in review order, members in score order.

    ``scores``: the scores table (sample_id, group_duplicates, reason_duplicates, score_duplicates,
    conflict_duplicates?); ``samples``: DataFrame[sample_id, label, split?]. Returns
    DataFrame[sample_id, group, reason, score, label, split, conflict, cross_split, size, rank]:
    ``conflict`` the group's members carry more than one label (unlabeled ignored), ``cross_split``
    they span two or more splits, ``rank`` the group's place (0 first): conflicting groups first,
    then cross-split ones, then by size (largest first), then by group id.

    >>> scores = pd.DataFrame({"sample_id": list("abcde"), "group_duplicates": [0, 0, 0, 1, 1],
    ...                        "reason_duplicates": None, "score_duplicates": 1.0})
    >>> samples = pd.DataFrame({"sample_id": list("abcde"), "label": ["x", "x", "x", "x", "y"]})
    >>> group_members(scores, samples).groupby("rank")["sample_id"].apply(list).tolist()
    [['d', 'e'], ['a', 'b', 'c']]
    """
    table = scores.drop_duplicates("sample_id")
    grouped = table["group_duplicates"].fillna(-1).astype(np.int64).to_numpy() >= 0
    table = table[grouped]
    by_id = samples.drop_duplicates("sample_id").set_index("sample_id")
    out = pd.DataFrame({"sample_id": table["sample_id"].astype(str).to_numpy(),
                        "group": table["group_duplicates"].astype(np.int64).to_numpy(),
                        "reason": table["reason_duplicates"].astype(object).to_numpy(),
                        "score": table["score_duplicates"].astype(float).to_numpy()})
    out["label"] = by_id["label"].reindex(out["sample_id"]).astype(object).to_numpy()
    split = by_id["split"] if "split" in by_id.columns else pd.Series(dtype=object)
    out["split"] = split.reindex(out["sample_id"]).astype(object).to_numpy()
    per_group = out.groupby("group")
    conflict = per_group["label"].nunique() > 1
    if "conflict_duplicates" in table.columns:  # the check's own verdict counts too
        flagged = pd.Series(table["conflict_duplicates"].fillna(False).astype(bool).to_numpy()).groupby(
            out["group"].to_numpy()).any()
        conflict = conflict | flagged.reindex(conflict.index, fill_value=False)
    summary = pd.DataFrame({"conflict": conflict, "cross_split": per_group["split"].nunique() > 1,
                            "size": per_group.size()})
    summary = summary.sort_values(["conflict", "cross_split", "size"], ascending=[False, False, False],
                                  kind="stable")  # the index (group id) is already ascending
    summary["rank"] = np.arange(len(summary))
    out = out.join(summary, on="group")
    return out.sort_values(["rank", "score", "sample_id"], ascending=[True, False, True],
                           kind="stable").reset_index(drop=True)


def empty_reason(project: Project, scores: pd.DataFrame | None) -> str | None:
    """What the page says instead of groups (None: there are groups to show)."""
    if scores is None:
        return NO_SCORES if project.is_indexed else NO_INDEX
    if not set(GROUP_COLUMNS) <= set(scores.columns):
        return OLD_SCORES
    if not (scores["group_duplicates"].fillna(-1) >= 0).any():
        return NO_GROUPS
    return None


# ------------------------------------------------------------------------------------ decisions

def _applier() -> review_actions.BatchApplier:
    if APPLIER_KEY not in st.session_state:
        st.session_state[APPLIER_KEY] = review_actions.BatchApplier()
        st.session_state[SESSION_KEY] = uuid.uuid4().hex
    return st.session_state[APPLIER_KEY]


def _action(kind: str, ids: list[str], undoes: str | None = None) -> dict:
    seq = int(st.session_state.get(SEQ_KEY, 0)) + 1
    st.session_state[SEQ_KEY] = seq
    action = {"seq": seq, "client_id": uuid.uuid4().hex, "kind": kind, "ids": ids, "by": team.reviewer_tag()}
    if undoes:
        action["undoes"] = undoes
    return action


def _shown() -> set[str]:
    return {s for ids in (st.session_state.get(SHOWN_KEY) or {}).values() for s in ids}


def _remember_shown(position: int, ids: list[str]) -> None:
    shown = dict(st.session_state.get(SHOWN_KEY) or {})
    shown.pop(position, None)
    shown[position] = tuple(ids)
    while len(shown) > SHOWN_GROUPS:
        shown.pop(next(iter(shown)))
    st.session_state[SHOWN_KEY] = shown


def _send(project: Project, actions: list[dict], known: set[str]) -> bool:
    """Apply the actions through the Review page's applier; True when every one was stored."""
    if not access.can("review"):
        st.session_state[ERRORS_KEY] = ["You may look at the duplicates but not decide: ask an admin for the "
                                        "reviewer role."]
        return False
    applier = _applier()
    payload = {"session": st.session_state[SESSION_KEY], "actions": actions}
    try:
        store = review_store(project)
        result = applier.apply(payload, store, sample_tables(project)[1], access.reviewer(),
                               known_ids=known, shown=_shown(), rate=team.rate_limiter(store))
    except (BatchError, StoreUnavailable) as err:
        st.session_state[ERRORS_KEY] = [f"Nothing was stored: {err}"]
        if isinstance(err, StoreUnavailable):
            st.session_state[team.DOWN_KEY] = team.short_reason(err)
        return False
    team.store_up()
    st.session_state[ERRORS_KEY] = result.errors
    return not result.refused and not result.deferred


def keep(project: Project, position: int, member: int, members: list[str], statuses: list[str],
         known: set[str]) -> None:
    """Keep ``members[member]``, mark the others ``duplicate`` (those not marked yet), then the next group."""
    others = [s for i, (s, status) in enumerate(zip(members, statuses)) if i != member and status != "duplicate"]
    actions = [_action("duplicate", others)] if others else []
    if statuses[member] == "duplicate":  # kept now: its earlier mark goes
        actions.append(_action("undo", [members[member]]))
    if not actions:
        return
    if _send(project, actions, known):
        history = list(st.session_state.get(HISTORY_KEY) or [])
        history.append({"group": position, "actions": [(a["client_id"], a["ids"]) for a in actions]})
        st.session_state[HISTORY_KEY] = history[-100:]
        st.session_state[GROUP_KEY] = position + 1


def undo_last(project: Project, known: set[str]) -> None:
    """Undo this tab's last keep (each of its actions, exactly) and go back to its group."""
    history = list(st.session_state.get(HISTORY_KEY) or [])
    if not history:
        st.session_state[ERRORS_KEY] = ["Nothing to undo in this tab."]
        return
    last = history[-1]
    actions = [_action("undo", list(ids), undoes=client_id) for client_id, ids in reversed(last["actions"])]
    if _send(project, actions, known):
        st.session_state[HISTORY_KEY] = history[:-1]
        st.session_state[GROUP_KEY] = last["group"]


def _move(delta: int, count: int) -> None:
    st.session_state[GROUP_KEY] = min(max(0, int(st.session_state.get(GROUP_KEY, 0)) + delta), max(0, count - 1))


# ------------------------------------------------------------------------------------ the page

def _header(group: pd.DataFrame, position: int, count: int) -> None:
    first = group.iloc[0]
    notes = [f"{len(group)} copies"]
    if first["conflict"]:
        labels = sorted({str(v) for v in group["label"].dropna()})
        notes.append("**conflicting labels**: " + ", ".join(text.plain(v) for v in labels))
    if first["cross_split"]:
        splits = sorted({str(v) for v in group["split"].dropna()})
        notes.append("**spans splits** (a leak): " + ", ".join(text.plain(v) for v in splits))
    st.markdown(f"Group {position + 1} of {count} · " + " · ".join(notes))


def _member_caption(k: int, row: pd.Series, status: str) -> str:
    label = "(no label)" if pd.isna(row["label"]) else str(row["label"])
    parts = [f"**{k}**" if k <= MAX_KEYS else str(k), text.plain(label)]
    if not pd.isna(row["split"]):
        parts.append(f"split {text.plain(row['split'])}")
    if status != "unreviewed":
        parts.append(f"_{text.plain(status)}_")
    caption = " · ".join(parts) + "  \n" + text.plain(row["sample_id"])
    if isinstance(row["reason"], str) and row["reason"]:
        caption += "  \n" + text.plain(row["reason"])
    return caption


def _members(project: Project, group: pd.DataFrame, statuses: list[str], position: int, known: set[str],
             can_decide: bool) -> None:
    ids = group["sample_id"].tolist()
    paths = thumbnails.for_project(project, THUMB_SIZE).ensure_many(ids)
    per_row = max(4, min(len(ids), 6))  # a pair takes half the width: thumbnails stay thumbnails
    for start in range(0, len(ids), per_row):
        columns = st.columns(per_row)
        for i in range(start, min(start + per_row, len(ids))):
            with columns[i - start]:
                st.image(str(paths[i]), width="stretch")
                st.markdown(_member_caption(i + 1, group.iloc[i], statuses[i]))
                st.button(f"Keep {i + 1}", key=f"mlfix_dup_keep_{i + 1}", disabled=not can_decide,
                          shortcut=str(i + 1) if i < MAX_KEYS else None, width="stretch",
                          type="primary" if statuses[i] != "duplicate" else "secondary",
                          on_click=keep, args=(project, position, i, ids, statuses, known),
                          help="Keep this one and mark the others of the group duplicate.")


def _navigation(project: Project, position: int, count: int, known: set[str], can_decide: bool) -> None:
    c1, c2, c3, c4, c5 = st.columns([1, 0.4, 1, 0.4, 1])
    c1.button("Previous", key="mlfix_dup_prev", icon=":material/chevron_left:", shortcut="P", width="stretch",
              on_click=_move, args=(-1, count), disabled=position == 0, help="Previous group (p or ←)")
    c2.button("←", key="mlfix_dup_left", shortcut="Left", on_click=_move, args=(-1, count),
              disabled=position == 0, width="stretch")
    c3.button("Next", key="mlfix_dup_next", icon=":material/chevron_right:", shortcut="N", width="stretch",
              on_click=_move, args=(1, count), disabled=position >= count - 1, help="Next group (n or →)")
    c4.button("→", key="mlfix_dup_right", shortcut="Right", on_click=_move, args=(1, count),
              disabled=position >= count - 1, width="stretch")
    c5.button("Undo", key="mlfix_dup_undo", icon=":material/undo:", shortcut="U", width="stretch",
              on_click=undo_last, args=(project, known),
              disabled=not can_decide or not st.session_state.get(HISTORY_KEY),
              help="Undo your last keep in this tab (u)")


def main() -> None:
    """The page: ``app_pages/duplicates.py`` calls this."""
    from mlfix.ui import state

    project = state.require_project()
    st.title("Duplicates")
    team.banner()
    scores = score_table(project)
    reason = empty_reason(project, scores)
    if reason:
        st.info(reason)
        return
    samples = project.samples
    members = group_members(scores, samples)
    count = int(members["rank"].max()) + 1
    known = set(members["sample_id"])
    position = min(max(0, int(st.session_state.get(GROUP_KEY, 0))), count - 1)
    st.session_state[GROUP_KEY] = position
    n_conflict = int(members.drop_duplicates("group")["conflict"].sum())
    n_cross = int(members.drop_duplicates("group")["cross_split"].sum())
    st.caption(f"{count:,} groups of copies ({len(members):,} images): {n_conflict:,} with conflicting labels, "
               f"{n_cross:,} across splits. Keys: 1–9 keep that image and mark the others duplicate; n/→ next, "
               "p/← previous, u undo. Exports can leave duplicates out (Export page, "
               "`mlfix export --drop-duplicates`).")
    group = members[members["rank"] == position].reset_index(drop=True)
    ids = group["sample_id"].tolist()
    can_decide = access.can("review")
    originals, _ = sample_tables(project)
    claimed = team.claim_page(review_store(project), ids, originals.index.get_indexer(ids), 0, len(ids),
                              access.reviewer(), CLAIM_PAGE_KEY) if can_decide else (ids, 0, 1)
    held = claimed is None or len(claimed[0]) < len(ids)  # someone else reviews some of these now
    _remember_shown(position, [] if held else ids)
    current = team.read_or(lambda: state_of(review_store(project), pd.Index(ids), originals),
                           lambda: pd.DataFrame(columns=["label", "status"]), key=f"dup|{position}")
    statuses = [str(current["status"].get(s, "unreviewed")) if len(current) else "unreviewed" for s in ids]
    if not can_decide:
        st.info("You may look at the groups; deciding which copy to keep needs the reviewer role.")
    team.show_refusals(st.session_state.get(ERRORS_KEY) or [])
    _navigation(project, position, count, known, can_decide)
    _header(group, position, count)
    _members(project, group, statuses, position, known, can_decide and not held)
