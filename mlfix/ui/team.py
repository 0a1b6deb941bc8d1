"""Team review in the pages: page claims, the "decisions are NOT being saved" banner, conflicts.

Kept out of the page files so that pages call one function each:

- :func:`claim_page` (Review page): the page being viewed is claimed for the reviewer (15 min,
  renewed at every run of the page, i.e. every decision or page turn); a page someone else holds
  is skipped for the next free one, with a message saying who has it until when.
- :func:`banner`, :func:`store_down`, :func:`read_or` (Review page): when the decisions database is
  unavailable, a red banner says decisions are not being saved, the grid stays on screen (it keeps
  the undelivered decisions and resends them), and the last known state is shown.
- :func:`conflicts_section` (Export page, admins): samples where reviewers disagree, the rule for
  the final labels, and downloads under that rule.

Claims are on in token and OIDC mode (several people), and in open mode with ``MLFIX_CLAIMS=1``.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd
import streamlit as st

from mlfix.review.claims import ClaimBook, ClaimTaken
from mlfix.review.log import FINAL_RULES
from mlfix.review.store import StoreUnavailable
from mlfix.ui import access

if TYPE_CHECKING:
    from mlfix.project import Project

DOWN_KEY = "mlfix_store_down"
SHOWN_KEY = "mlfix_store_down_shown"
LAST_STATE_KEY = "mlfix_last_state"
CLAIM_KEY = "mlfix_claimed_unit"
RULE_KEY = "mlfix_final_rule"
ADMINS_KEY = "mlfix_final_admins"
RULE_HELP = {"latest": "latest: the latest decision of anyone (what the grid shows)",
             "majority": "majority: the label most reviewers gave (ties: the most recent of the tied labels)",
             "admin_wins": "admin wins: the latest label an admin gave; elsewhere the majority"}


# ------------------------------------------------------------------------------------ database down


def banner() -> None:
    """At the top of the page: the red banner when the last write failed for an unavailable database."""
    st.session_state[SHOWN_KEY] = False
    if st.session_state.get(DOWN_KEY):
        _show_down(st.session_state[DOWN_KEY])


def _show_down(reason: str) -> None:
    if st.session_state.get(SHOWN_KEY):
        return
    st.session_state[SHOWN_KEY] = True
    st.error(f"**Decisions are NOT being saved**: the decisions database is unavailable ({reason}). "
             "Keep this tab open: your decisions are kept here and sent again until the database is back.",
             icon=":material/cloud_off:")


def store_down(error: BaseException) -> None:
    """Remember and show that the database is unavailable (called where a read or write failed)."""
    st.session_state[DOWN_KEY] = short_reason(error)
    _show_down(st.session_state[DOWN_KEY])


def store_up() -> None:
    st.session_state.pop(DOWN_KEY, None)


def short_reason(error: BaseException) -> str:
    text = str(error)
    return text.split(": decisions are NOT")[0][:300]


def read_or(read: Callable[[], Any], fallback: Callable[[], Any], key: str | None = None) -> Any:
    """``read()``; when the database is unavailable, the banner and ``fallback()`` (or the last
    value read under ``key``)."""
    try:
        value = read()
    except StoreUnavailable as err:
        store_down(err)
        cached = st.session_state.get(LAST_STATE_KEY, {}).get(key) if key else None
        return cached if cached is not None else fallback()
    if key:
        st.session_state.setdefault(LAST_STATE_KEY, {})[key] = value
    return value


# ------------------------------------------------------------------------------------ claims


def claims_on() -> bool:
    return access.mode() in ("token", "oidc") or os.environ.get("MLFIX_CLAIMS") == "1"


@st.cache_resource(show_spinner=False, max_entries=4)
def _book(url: str, _store) -> ClaimBook:
    return ClaimBook.for_store(_store)


def claim_book(store) -> ClaimBook:
    return _book(store.url, store)


def _clock_text(when: _dt.datetime) -> str:
    """``14:05`` in the browser's time zone when known, else ``14:05 UTC``."""
    zone = getattr(getattr(st, "context", None), "timezone", None)
    if zone:
        try:
            from zoneinfo import ZoneInfo

            return when.astimezone(ZoneInfo(zone)).strftime("%H:%M")
        except Exception:
            pass
    return when.astimezone(_dt.timezone.utc).strftime("%H:%M UTC")


def claim_page(store, unit: str, page: int, pages: int, reviewer: str, page_key: str) -> int | None:
    """Claim ``page`` of ``unit`` for ``reviewer``, or the next free page; returns the page to show.

    Returns None when every page is held by someone else (a message says so). Writes the page
    shown into ``st.session_state[page_key]``. Without claims (open mode), returns ``page``.
    """
    if not claims_on():
        return page
    try:
        book = claim_book(store)
        previous = st.session_state.get(CLAIM_KEY)
        if previous and previous != unit:
            book.release(previous, reviewer)  # left that class: its page is free for others
        st.session_state[CLAIM_KEY] = unit
        try:
            book.claim(unit, page, reviewer)
            return page
        except ClaimTaken as error:
            taken = error  # the except clause's name is gone after it
        free = book.claim_next(unit, pages, reviewer, start=page)
    except StoreUnavailable as err:
        store_down(err)
        return page
    if free is None:
        holders = book.active(unit)
        who = ", ".join(f"{r.reviewer} (page {r.page + 1}, until {_clock_text(r.expires_at)})"
                        for r in holders.itertuples())
        st.warning(f"Every page here is being reviewed by someone else: {who}. Pick another class, or "
                   "come back when a page is free.", icon=":material/group:")
        return None
    st.info(f"Page {taken.page + 1} is being reviewed by **{taken.by}** until {_clock_text(taken.until)}: "
            f"showing page {free + 1}, the next free page.", icon=":material/group:")
    st.session_state[page_key] = free
    return free


# ------------------------------------------------------------------------------------ conflicts


def _default_rule() -> str:
    rule = os.environ.get("MLFIX_FINAL_LABEL_RULE") or access.read_secrets().get("mlfix", {}).get("final_label_rule")
    return rule if rule in FINAL_RULES else "latest"


def conflicts_section(project: Project) -> None:
    """Export page, admins only: conflicts, the rule for the final labels, downloads under it."""
    from mlfix.review import export

    if not access.can("resolve_conflicts"):
        return
    st.subheader("Conflicts between reviewers")
    store = project.reviews
    samples = project.samples
    try:
        conflicts = store.conflicts(samples[["sample_id", "label"]])
        people = store.per_reviewer()["reviewer"].tolist()
    except StoreUnavailable as err:
        store_down(err)
        return
    default = _default_rule()
    rule = st.selectbox("Final label when reviewers disagree", list(FINAL_RULES), key=RULE_KEY,
                        index=list(FINAL_RULES).index(default), format_func=RULE_HELP.get,
                        help="Used for the table below and the downloads under it. Server default: "
                             "MLFIX_FINAL_LABEL_RULE or [mlfix] final_label_rule.")
    admins: list[str] = []
    if rule == "admin_wins":
        me = access.identity()
        configured = set(access.settings().admins) if access.settings() is not None else set()
        suggested = [p for p in people if p == getattr(me, "name", None) or p.lower() in configured]
        admins = st.multiselect("Whose decisions win", people, default=suggested, key=ADMINS_KEY,
                                help="The reviewers whose latest label is final where they decided.")
    final = store.final_labels(samples[["sample_id", "label"]], rule, admins)
    if conflicts.empty:
        st.info("No conflicts: where several reviewers decided on an image, they agree.")
    else:
        shown = conflicts.merge(final[["sample_id", "label", "basis", "tie"]].rename(
            columns={"label": "final_label"}), on="sample_id", how="left")
        shown["verdicts"] = shown["verdicts"].map(lambda v: ", ".join(f"{k}: {x}" for k, x in sorted(v.items())))
        st.dataframe(shown.rename(columns={"label": "latest_label"}), hide_index=True, key="mlfix_conflicts",
                     width="stretch")
        st.caption(f"{len(conflicts):,} image(s) where reviewers' latest decisions differ; "
                   f"{int(final['tie'].sum()):,} tie(s) under this rule.")
    if rule != "latest":
        table = export.export_table(samples, store.final_state(samples[["sample_id", "label"]], rule, admins))
        name = f"{project.dir.name}-labels-{rule}"
        c1, c2 = st.columns(2)
        c1.download_button(f"CSV ({rule})", export.to_csv(table), file_name=f"{name}.csv", mime="text/csv",
                           key="mlfix_final_csv", width="stretch")
        c2.download_button(f"JSON ({rule})", export.to_json(table), file_name=f"{name}.json",
                           mime="application/json", key="mlfix_final_json", width="stretch")
        st.caption(f"{int(table['changed'].sum()):,} label(s) changed under this rule. From Python: "
                   f"`project.reviews.final_state(project.samples, {rule!r}, admins=...)`.")
