"""Review: the sorted grid, one class (or one published view, or one confusion cell) at a time.

Similar images sit side by side (the project's similarity ordering: by pooled embedding by default,
by visual words one click away in "Sort by") or the most suspicious come first (any score column).
Every key press in the grid is a decision stored at once in the project's decisions store; see
:mod:`mlfix.ui.grid` for how the grid and this script talk. The confusion heatmap (given label x the
probe's prediction, from the cached scores) opens a cell's samples in the grid, most suspicious
first; see :mod:`mlfix.ui.confusion_section`.

Runs inside ``app.py`` (st.navigation) and on its own (``streamlit run app_pages/review.py -- --project
DIR``, and AppTest). Imports no torch.
"""

from __future__ import annotations

import math
import pandas as pd
import streamlit as st

from mlfix.data import thumbnails
from mlfix.project import Project
from mlfix.review import actions as review_actions
from mlfix.review.store import StoreUnavailable
from mlfix.ui import access, classes_panel, confusion_section, grid, scores_job, state, suggestions, team, text
from mlfix.ui.review_data import (SIMILARITY_ORDERS, make_items, neighbours, ordering, page_runs, published_views,
                                  review_scores, review_store, sample_tables, score_columns, scores_by_id,
                                  similarity_options, state_of)

GRID_KEY = "mlfix_review_grid"
PAGE_KEY = "mlfix_review_page"
CONTEXT_KEY = "mlfix_review_context"
APPLIER_KEY = "mlfix_review_applier"
ERRORS_KEY = "mlfix_review_errors"
BATCHES_KEY = "mlfix_review_batches"
FOCUS_KEY = "mlfix_review_focus"
ALL_IMAGES = "(all images)"
BY_CLASS = "By class"
PAGE_SIZES = (100, 150, 200)
THUMB_SIZE = 128
PANEL_SIZE = 256
NEIGHBOURS = 8


# ------------------------------------------------------------------------------------ actions


def _applier() -> review_actions.BatchApplier:
    if APPLIER_KEY not in st.session_state:
        st.session_state[APPLIER_KEY] = review_actions.BatchApplier()
    return st.session_state[APPLIER_KEY]


def _apply_actions(project: Project, store, labels: list[str], view: str | None) -> None:
    """Callback of the grid's ``actions`` trigger: store the batch (exactly once), move pages."""
    st.session_state[BATCHES_KEY] = st.session_state.get(BATCHES_KEY, 0) + 1
    try:
        payload = st.session_state[GRID_KEY]["actions"]
    except (KeyError, TypeError):
        return
    if not isinstance(payload, dict):
        return
    if isinstance(payload.get("focus"), str):
        st.session_state[FOCUS_KEY] = payload["focus"]
    if not payload.get("actions"):
        return  # a focus move only
    known = project.row_of
    try:
        result = _applier().apply(payload, store, labels, access.reviewer(),
                                  known_ids=(lambda s: _is_known(known, s)) if known else None,
                                  view=view, rate=team.rate_limiter(store),
                                  shown=team.shown_or_held(grid.shown_ids(GRID_KEY), store, known, access.reviewer()))
    except review_actions.BatchError as err:  # not a batch at all: resending it cannot help
        st.session_state[ERRORS_KEY] = [f"Refused a malformed batch: {err}"]
        return
    except Exception as err:  # the grid resends the batch; say why it was not stored
        st.session_state[ERRORS_KEY] = [f"Not stored yet ({type(err).__name__}: {err}); retrying."]
        if isinstance(err, StoreUnavailable):
            st.session_state[team.DOWN_KEY] = team.short_reason(err)  # the page's banner says it
        return
    team.store_up()
    st.session_state[ERRORS_KEY] = result.errors
    if result.page_delta:
        st.session_state[PAGE_KEY] = st.session_state.get(PAGE_KEY, 0) + result.page_delta


def _is_known(row_of, sample_id: str) -> bool:
    try:
        row_of(sample_id)
        return True
    except KeyError:
        return False


def _turn_page(delta: int) -> None:
    st.session_state[PAGE_KEY] = st.session_state.get(PAGE_KEY, 0) + delta


# ------------------------------------------------------------------------------------ page


def _focused_id() -> str | None:
    value = st.session_state.get(FOCUS_KEY)
    return value if isinstance(value, str) else None


def _panel(project: Project, store, focus: str, url_for, originals: pd.Series, scores: pd.DataFrame | None,
           sort: str) -> dict:
    """The side panel of the focused image: a larger thumbnail and its nearest neighbours."""
    big = thumbnails.for_project(project, PANEL_SIZE)
    panel = {"id": focus, "url": url_for(big, [focus])[0], "label": _text(originals.get(focus))}
    if scores is not None and focus in scores.index:
        row = scores.loc[focus]
        panel["suggested"] = _text(row.get("suggested_label"))
        column = sort if sort in row.index else "score" if "score" in row.index else None
        if column is not None and not pd.isna(row[column]):
            panel["score"] = float(row[column])
    try:
        near = neighbours(project, focus, NEIGHBOURS) if project.is_indexed else []
    except Exception:
        near = []
    if near:
        small = thumbnails.for_project(project, THUMB_SIZE)
        current = state_of(store, pd.Index(near), originals)
        panel["neighbours"] = make_items(near, url_for(small, near), current, originals, None)
    return panel


def _text(value) -> str | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def main() -> None:
    project = state.require_project()
    team.banner()
    try:
        store = review_store(project)
    except StoreUnavailable as err:  # down when the page opens: nothing to lose yet
        team.store_down(err)
        st.stop()
    originals, labels = sample_tables(project)
    views = published_views(project)
    scores = review_scores(project)  # only the columns this page reads
    # A dense tool: use the width of the window (this style lives only while the page is shown).
    st.html("<style>.block-container{padding:2.2rem 1.5rem 0.5rem 1.5rem;max-width:none}</style>")

    # ---- pickers ---------------------------------------------------------------------------
    conf = confusion_section.confusion_data(project, scores, originals)
    originals, classes = classes_panel.effective(store, originals, labels)  # after renames/merges; the palette
    unlabeled = int(originals.isna().sum())  # label mode: all images first
    cell = st.session_state.get(confusion_section.CELL_KEY) if conf is not None else None
    cell_ids_view = confusion_section.cell_view(project, conf[0], cell) if cell is not None else None
    widths = ([1.0] if cell is not None else []) + ([1.3] if views else []) + [1.3, 1.2, 0.7, 0.75, 0.75]
    cols = list(st.columns(widths, vertical_alignment="bottom"))
    if cell is not None:
        cols.pop(0).button("Classes", key="mlfix_review_back", icon=":material/arrow_back:",
                           on_click=confusion_section.close_cell, width="stretch",
                           help="Close the confusion cell: back to one class at a time.")
    view_name = BY_CLASS
    if views:
        view_name = cols.pop(0).selectbox("Images", [BY_CLASS] + list(views), key="mlfix_review_view",
                                          disabled=cell is not None, format_func=text.visible,
                                          help="Views are published from Python with project.publish_view().")
    view = views.get(view_name) if view_name != BY_CLASS else None
    if cell is not None:
        view_name, view = f"confusion: {cell[0]} → {cell[1]}", cell_ids_view
    label_options = [ALL_IMAGES] + labels if unlabeled else labels + [ALL_IMAGES]
    label = cols[0].selectbox("Class", label_options, key="mlfix_review_class", disabled=view is not None,
                              format_func=text.visible, help="Images whose given label is this class.")
    sort = cols[1].selectbox("Sort by", similarity_options(project) + score_columns(scores), key="mlfix_review_sort",
                             help="Similarity: similar images side by side, by the pooled embedding and the "
                                  "visual words together (the default where the index has it: the most "
                                  "neighbours of the same class, measured), the embedding alone or shared "
                                  "visual words. "
                                  "A score: most likely mislabeled first. A confusion cell opens most "
                                  "suspicious first.")
    page_size = cols[2].selectbox("Per page", PAGE_SIZES, index=len(PAGE_SIZES) - 1, key="mlfix_review_size")
    mostly_unlabeled = unlabeled > len(originals) / 2  # labelling from scratch
    scores_job.offer(project, scores, mostly_unlabeled)  # no scores yet: compute them in the background
    suggestions.trust_warning(project)  # the probe near chance: label-based scores are not to be trusted
    suggestions.offer(project, scores, unlabeled > 0)  # labelling from scratch: suggested labels for the rest
    if conf is not None or not mostly_unlabeled:  # no confusion to show before there are labels
        confusion_section.section(project, scores, conf, cell)
    classes_panel.section(store, labels, classes, unlabeled, len(originals))

    ids, id_index, note, rows = ordering(project, None if label == ALL_IMAGES else label, view_name, view,
                                         sort, scores)
    context = (view_name, label, sort, page_size)
    if st.session_state.get(CONTEXT_KEY) != context:
        st.session_state[CONTEXT_KEY] = context
        st.session_state[PAGE_KEY] = 0
    pages = max(1, math.ceil(len(ids) / page_size))
    page = min(max(0, int(st.session_state.get(PAGE_KEY, 0))), pages - 1)
    st.session_state[PAGE_KEY] = page
    page_ids = [str(s) for s in ids[page * page_size:(page + 1) * page_size]]
    if len(ids):  # with several reviewers, the images on screen are this reviewer's for a while
        claimed = team.claim_page(store, ids, rows, page, page_size,
                                  access.reviewer(), PAGE_KEY)
        if claimed is None:
            return
        page_ids, page, pages = claimed
    cols[3].button("Prev", key="mlfix_review_prev", icon=":material/chevron_left:", on_click=_turn_page,
                   args=(-1,), disabled=page == 0, width="stretch", help="Previous page (p)")
    cols[4].button("Next", key="mlfix_review_next", icon=":material/chevron_right:", on_click=_turn_page,
                   args=(1,), disabled=page >= pages - 1, width="stretch", help="Next page (n)")
    if note:
        st.caption(note)
    if view is not None and view.get("note"):
        st.caption(f"View **{text.plain(view_name)}**: {text.plain(view['note'])}")
    if len(ids) == 0:
        st.info("No images here.")
        return

    # ---- the grid ----------------------------------------------------------------------------
    static_dir = grid.static_serving_dir()

    def url_for(cache, some_ids):
        return grid.thumbnail_urls(cache, some_ids, static_dir)

    urls = url_for(thumbnails.for_project(project, THUMB_SIZE), page_ids)
    current = team.read_or(lambda: state_of(store, id_index, originals),
                           lambda: pd.DataFrame(columns=["label", "status"]), key=str(context))
    indexed_scores = scores_by_id(project, scores)
    suggested = None
    if indexed_scores is not None and "suggested_label" in indexed_scores.columns:
        suggested = indexed_scores["suggested_label"]
    hint = suggestions.for_grid(project, scores, unlabeled > 0)  # (label, confidence) by id; None: the scores' own
    if hint is not None:  # the button's suggestions first; the scores' where it made none (e.g. labelled images)
        page_hint = hint[0].reindex(page_ids)  # this page only: a whole-table union would cost seconds at 10M
        suggested = page_hint if suggested is None else page_hint.fillna(suggested.reindex(page_ids))
    items = make_items(page_ids, urls, current, originals, suggested)
    if hint is not None:
        suggestions.add_confidence(items, hint[1])
    for item, run in zip(items, page_runs(project, None if label == ALL_IMAGES else label, sort, view,
                                          id_index.get_indexer(page_ids)) or ()):
        item["run"] = run
    reviewed = int((current["status"] != "unreviewed").sum())
    title = (f"Confusion: {cell[0]} → {cell[1]}" if cell is not None
             else f"View: {view_name}" if view is not None else f"Class: {label}")
    focus = _focused_id()
    if focus not in set(page_ids):
        focus = page_ids[0]
    panel = team.read_or(lambda: _panel(project, store, focus, url_for, originals, indexed_scores, sort),
                         lambda: {"id": focus, "url": url_for(thumbnails.for_project(project, PANEL_SIZE), [focus])[0],
                                  "label": _text(originals.get(focus))})
    errors = st.session_state.get(ERRORS_KEY) or []
    team.show_refusals(errors)
    grid.render(key=GRID_KEY, view=f"{context}|{page}", items=items, palette=grid.palette(classes),
                counter={"reviewed": reviewed, "total": len(ids), "title": title},
                page={"index": page, "count": pages}, acks=dict(_applier().last_seq), panel=panel,
                errors=errors, show_labels=view is not None or label == ALL_IMAGES,
                # label mode: the suggestions for the unlabelled images are the point, whatever made them
                show_suggested=sort not in SIMILARITY_ORDERS or cell is not None or hint is not None or unlabeled > 0,
                batches=st.session_state.get(BATCHES_KEY, 0), reviewer_tag=team.reviewer_tag(),
                on_actions=lambda: _apply_actions(project, store, classes,
                                                  view_name if view is not None else None))
    if static_dir is None:
        st.caption("Tip: set `server.enableStaticServing = true` in `.streamlit/config.toml` for faster "
                   "thumbnails.")


main()
