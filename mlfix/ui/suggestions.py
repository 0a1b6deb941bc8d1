"""The Review page's suggested labels (labelling from scratch) and its warning about untrusted labels.

- :func:`trust_warning`: when the last scores found the probe's accuracy near chance
  (:mod:`mlfix.scoring.trust`), one warning line: the label-based scores are not to be trusted.
- :func:`offer`: a **Suggest labels** button that runs :meth:`mlfix.project.Project.suggest` (the kNN
  vote of the labelled images: about a second for 10,000 images), or the reason nothing can be
  suggested yet (fewer than two classes labelled). Suggestions are not recomputed at every key
  press (that would slow the grid down); the button refreshes them.
- :func:`for_grid`: the cached suggestions for the grid's tiles (``suggest: cat 0.92``; Enter takes
  them), used when there are no scores or the scores' labels are not to be trusted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from mlfix.ui import text

if TYPE_CHECKING:
    from mlfix.project import Project

BUTTON_KEY = "mlfix_review_suggest"
MESSAGE_KEY = "mlfix_review_suggest_message"


def trust(project: Project) -> dict | None:
    """The trust summary the last scores wrote (``scores.trust.json``), or None."""
    from mlfix.scoring.trust import TRUST_FILE, read_trust

    return read_trust(project.dir / TRUST_FILE)


def trust_warning(project: Project) -> None:
    """A warning line when the label-based scores are not to be trusted (or rough)."""
    found = trust(project)
    if found and found.get("verdict") in ("untrusted", "weak") and found.get("message"):
        st.warning(text.plain(found["message"]), icon=":material/report:")


def wanted(project: Project, scores: pd.DataFrame | None, label_mode: bool = False) -> bool:
    """Whether the grid should show these suggestions: no scores, scores learned from untrusted labels,
    or ``label_mode`` (images came without labels: the suggestions from what reviewers have labelled
    so far, refreshed by the button, say more than scores computed earlier)."""
    if not project.is_indexed:
        return False
    return scores is None or label_mode or (trust(project) or {}).get("verdict") == "untrusted"


def _suggest(project: Project) -> None:
    try:
        table = project.suggest()
    except Exception as err:  # the store down, a damaged index: say why, keep the page
        st.session_state[MESSAGE_KEY] = f"No suggestions: {err}"
        return
    reason = table.attrs.get("reason")
    st.session_state[MESSAGE_KEY] = reason if table.empty and reason else \
        f"{len(table):,} suggestions from {table.attrs.get('learned_from', 'the labels')}: Enter takes them."


def offer(project: Project, scores: pd.DataFrame | None, label_mode: bool = False) -> None:
    """The **Suggest labels** button (and its last message) while :func:`wanted`."""
    if not wanted(project, scores, label_mode):
        return
    left, right = st.columns([1, 4], vertical_alignment="center")
    left.button("Suggest labels", key=BUTTON_KEY, icon=":material/auto_awesome:", on_click=_suggest,
                args=(project,), help="Suggest a label for every image not labelled yet, from the ones "
                                      "that are (their nearest labelled neighbours). Press again after "
                                      "labelling more.")
    message = st.session_state.get(MESSAGE_KEY)
    if message:
        right.caption(text.plain(message))


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached(project_dir: str, stamp: tuple) -> tuple[pd.Series, pd.Series] | None:
    from mlfix.scoring.suggest import read_suggestions

    table = read_suggestions(project_dir)
    if table is None or table.empty:
        return None
    by_id = table.drop_duplicates("sample_id").set_index("sample_id")
    return by_id["suggested_label"], by_id["confidence"]


def for_grid(project: Project, scores: pd.DataFrame | None,
             label_mode: bool = False) -> tuple[pd.Series, pd.Series] | None:
    """(suggested label, confidence) by sample id for the grid, or None (see :func:`wanted`)."""
    from mlfix.scoring.suggest import CACHE_FILE
    from mlfix.ui import loaders

    if not wanted(project, scores, label_mode):
        return None
    return _cached(str(project.dir), loaders.stamp(project.dir, (CACHE_FILE,)))


def add_confidence(items: list[dict], confidence: pd.Series) -> list[dict]:
    """Each item with a suggestion gets its ``confidence`` (0..1, two decimals) for the tile's caption.

    >>> add_confidence([{"id": "a", "suggested": "cat"}, {"id": "b", "suggested": None}],
    ...                pd.Series({"a": 0.923}))
    [{'id': 'a', 'suggested': 'cat', 'confidence': 0.92}, {'id': 'b', 'suggested': None}]
    """
    for item in items:
        value = confidence.get(item["id"]) if item.get("suggested") else None
        if value is not None and not pd.isna(value):
            item["confidence"] = round(float(value), 2)
    return items
