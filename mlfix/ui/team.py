"""Team review in the pages: page claims, the "decisions are NOT being saved" banner, conflicts.

Kept out of the page files so that pages call one function each:

- :func:`claim_page` (Review page): the images on screen are claimed for the reviewer (15 min,
  renewed while they stay on screen), as a set of sample rows, so another sort or page size is not
  another claim; images someone else holds are left out of this reviewer's pages, with a message
  saying who has them until when.
- :func:`reviewer_tag`, :func:`rate_limiter`, :func:`show_refusals` (Review page): what guards a
  grid batch (see :mod:`mlfix.review.actions`), and its refusals shown as plain text.
- :func:`banner`, :func:`store_down`, :func:`read_or` (Review page): when the decisions database is
  unavailable, a red banner says decisions are not being saved, the grid stays on screen (it keeps
  the undelivered decisions and resends them), and the last known state is shown.
- :func:`conflicts_section` (Export page, admins): samples where reviewers disagree, the rule for
  the final labels, and downloads under that rule.

Claims are on in token and OIDC mode (several people), and in open mode with ``MLFIX_CLAIMS=1``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import pandas as pd
import streamlit as st

from mlfix import limits
from mlfix.review import guard
from mlfix.review.claims import ClaimBook
from mlfix.review.log import FINAL_RULES
from mlfix.review.store import StoreUnavailable
from mlfix.ui import access, text

if TYPE_CHECKING:
    from mlfix.project import Project

DOWN_KEY = "mlfix_store_down"
SHOWN_KEY = "mlfix_store_down_shown"
LAST_STATE_KEY = "mlfix_last_state"
CLAIM_KEY = "mlfix_claimed_rows"  # (database, reviewer, rows, when) of the last claim written
CLAIM_UNIT = "samples"  # claims on sample rows: the same images whatever the sort or page size
RENEW_S = 60.0
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
    st.error(f"**Decisions are NOT being saved**: the decisions database is unavailable ({text.plain(reason)}). "
             "Keep this tab open: your decisions are kept here and sent again until the database is back.",
             icon=":material/cloud_off:")


def store_down(error: BaseException) -> None:
    """Remember and show that the database is unavailable (called where a read or write failed)."""
    st.session_state[DOWN_KEY] = short_reason(error)
    _show_down(st.session_state[DOWN_KEY])


def store_up() -> None:
    st.session_state.pop(DOWN_KEY, None)


def short_reason(error: BaseException) -> str:
    return str(error).split(": decisions are NOT")[0][:300]


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


def claim_page(store, ids: Sequence[str], rows: np.ndarray, page: int, page_size: int, reviewer: str,
               page_key: str) -> tuple[list[str], int, int] | None:
    """The images of ``page`` for ``reviewer``, claimed: ``(page_ids, page, pages)``, or None when
    every image here is held by someone else (a warning says by whom).

    ``ids``: the images in the order on screen; ``rows``: their rows in the project's samples (-1:
    none). With claims on, the images someone else holds are left out of this reviewer's pages and
    the page shown is claimed as its set of sample rows (:meth:`ClaimBook.claim_rows`), whatever
    the sort or page size; a message says how many are left out and who holds them. Writes the
    page shown into ``st.session_state[page_key]``. Without claims, plain pages of ``ids``.
    """
    ids = np.asarray(ids, dtype=object)
    rows = np.asarray(rows, dtype=np.int64)
    for _ in range(2):  # a second pass when someone claimed one of these images meanwhile
        try:
            others = claim_book(store).held_by_others(CLAIM_UNIT, reviewer) if claims_on() else {}
        except StoreUnavailable as err:
            store_down(err)
            others = {}
        free, chosen, page, pages = free_page(rows, others, page, page_size)
        st.session_state[page_key] = page
        if others and not len(chosen):
            st.warning(f"Every image here is being reviewed by someone else: {_holders_text(others.values())}. "
                       "Pick another class, or come back when they are done.", icon=":material/group:")
            return None
        if not claims_on() or _claim(store, rows[chosen], reviewer):
            break
    if others and not free.all():
        held = [others[r] for r in set(rows[~free].tolist()) if r in others]
        st.info(f"{int((~free).sum()):,} image(s) here are being reviewed by {_holders_text(held)}: they are "
                "left out of your pages.", icon=":material/group:")
    return [str(s) for s in ids[chosen]], page, pages


def free_page(rows: np.ndarray, others: Collection[int], page: int,
              page_size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Page ``page`` of the images nobody else holds: ``(free mask, positions on the page, page, pages)``.

    ``rows``: the sample row of each image in screen order; ``others``: rows held by others.

    >>> free, chosen, page, pages = free_page(np.array([5, 6, 7, 8, 9]), {6, 8}, 1, 2)
    >>> chosen.tolist(), page, pages
    ([4], 1, 2)
    """
    rows = np.asarray(rows, dtype=np.int64)
    held = np.fromiter(others, np.int64, len(others))
    free = ~np.isin(rows, held) if len(held) else np.ones(len(rows), bool)
    pages = max(1, math.ceil(int(free.sum()) / page_size))
    page = min(max(0, int(page)), pages - 1)
    return free, np.flatnonzero(free)[page * page_size:(page + 1) * page_size], page, pages


def _holders_text(claims) -> str:
    by: dict[str, _dt.datetime] = {}
    for claim in claims:
        by[claim.reviewer] = max(by.get(claim.reviewer, claim.expires_at), claim.expires_at)
    return ", ".join(f"{text.plain(name)} (until {_clock_text(until)})" for name, until in sorted(by.items()))


def _claim(store, rows: np.ndarray, reviewer: str) -> bool:
    """Claim these sample rows; False when someone else took one meanwhile (renewed at most once a
    minute while the same rows are on screen: a key press costs no claim write)."""
    rows = sorted(int(r) for r in rows if r >= 0)
    now = _dt.datetime.now(_dt.timezone.utc)
    last = st.session_state.get(CLAIM_KEY)
    fresh = isinstance(last, tuple) and (now - last[3]).total_seconds() < RENEW_S
    if fresh and last[:3] == (store.url, reviewer, rows):
        return True
    try:
        taken = claim_book(store).claim_rows(CLAIM_UNIT, rows, reviewer)
    except StoreUnavailable as err:
        store_down(err)
        return True  # shown as it is: the banner says decisions are not being saved
    if taken:
        return False
    st.session_state[CLAIM_KEY] = (store.url, reviewer, rows, now)
    return True


def shown_or_held(shown: Collection[str], store, row_of: Callable[[str], int] | None,
                  reviewer: str) -> Callable[[str], bool]:
    """Whether a batch from this tab may decide on an image: shown to this tab, or (claims on) held by
    ``reviewer`` in the last 15 minutes, on any server: a tab reloaded, or moved to another server,
    keeps the decisions it queued on images it was shown. The database is asked at the first image
    this tab was not shown (``row_of``: sample id -> row, KeyError when unknown)."""
    if row_of is None or not claims_on():
        return shown.__contains__
    held: set[int] | None = None

    def check(sample_id: str) -> bool:
        nonlocal held
        if sample_id in shown:
            return True
        try:
            row = int(row_of(sample_id))
        except (KeyError, ValueError, TypeError):
            return False
        if held is None:
            held = claim_book(store).recent(CLAIM_UNIT, reviewer)
        return row in held

    return check


# ------------------------------------------------------------------------------------ refusals


def reviewer_tag() -> str:
    """The signed-in reviewer's tag: the grid stamps it on each action (see :mod:`mlfix.review.guard`)."""
    return guard.reviewer_tag(access.reviewer())


def rate_limiter(store: Any = None) -> "guard.RateLimiter | Any":
    """The decisions-per-minute limiter (``MLFIX_MAX_DECISIONS_PER_MINUTE``) shared by all tabs: in the
    database on PostgreSQL (every server counts one allowance), else this server's (:mod:`mlfix.review.rate`)."""
    from mlfix.review import rate

    return rate.limiter_for(store, limits.current().decisions_per_minute)


def show_refusals(errors: Sequence[str]) -> None:
    """The messages of the last batch (refused or deferred actions) above the grid, as plain text."""
    if errors:
        st.warning("  \n".join(text.plain(e) for e in errors[:5]) + (f"  \n(and {len(errors) - 5} more)"
                                                                    if len(errors) > 5 else ""),
                   icon=":material/block:")


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
