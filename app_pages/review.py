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
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from mlfix.data import thumbnails
from mlfix.project import Project
from mlfix.review import actions as review_actions
from mlfix.review.store import ReviewStore, StoreUnavailable
from mlfix.ui import access, confusion_section, grid, scores_job, state, team

GRID_KEY = "mlfix_review_grid"
PAGE_KEY = "mlfix_review_page"
CONTEXT_KEY = "mlfix_review_context"
APPLIER_KEY = "mlfix_review_applier"
ERRORS_KEY = "mlfix_review_errors"
BATCHES_KEY = "mlfix_review_batches"
FOCUS_KEY = "mlfix_review_focus"
ALL_IMAGES = "(all images)"
BY_CLASS = "By class"
SIMILARITY = "Similarity (embedding)"  # the default order: its neighbour purity measured higher
SIMILARITY_WORDS = "Similarity (visual words)"
SIMILARITY_ORDERS = {SIMILARITY: "embedding", SIMILARITY_WORDS: "words"}  # sort option -> Project.order(by=)
NO_EMBEDDING_ORDER = ("This project was indexed before the embedding order existed: showing the visual-word "
                      "order. Index it again (Training page, or `mlfix index`) to add it; the features are reused.")
PAGE_SIZES = (100, 150, 200)
THUMB_SIZE = 128
PANEL_SIZE = 256
NEIGHBOURS = 8


# ------------------------------------------------------------------------------------ data


def review_store(project: Project) -> ReviewStore:
    """The project's decisions store (one per open project: it holds a connection pool)."""
    return project.reviews


def published_views(project: Project) -> dict[str, dict]:
    """``{name: {sample_ids, note, created}}`` published from a notebook; {} when none or unsupported."""
    try:
        return dict(project.views())
    except Exception:  # a damaged view file must not break the page
        return {}


def score_table(project: Project) -> pd.DataFrame | None:
    """The project's last computed scores, or None. Never computes them here: that is slow work
    for the Training page or a notebook (``project.scores()``), and would import torch."""
    path = Path(project.dir) / "scores.parquet"
    if not path.exists():
        return None
    try:
        table = project.cached_scores()
    except Exception:  # scores being rewritten, or an old format: sort by similarity only
        return None
    return table if isinstance(table, pd.DataFrame) and "sample_id" in table.columns else None


@st.cache_resource(show_spinner=False, max_entries=4)
def _scores_by_id(project_dir: str, stamp: tuple, _scores: pd.DataFrame) -> pd.DataFrame:
    return _scores.drop_duplicates("sample_id").set_index("sample_id")


def scores_by_id(project: Project, scores: pd.DataFrame | None) -> pd.DataFrame | None:
    """The scores indexed by sample id (made once per version of scores.parquet)."""
    from mlfix.ui import loaders

    if scores is None:
        return None
    return _scores_by_id(str(project.dir), loaders.stamp(project.dir, ("scores.parquet",)), scores)


def score_columns(table: pd.DataFrame | None) -> list[str]:
    if table is None:
        return []
    return [c for c in table.columns if c == "score" or c.startswith("score_")]


def ordered_ids(project: Project, label: str | None, view: dict | None, sort: str,
                scores: pd.DataFrame | None) -> tuple[np.ndarray, str | None]:
    """The sample ids to review in order, and a note when the order is a fallback."""
    samples = project.samples
    note = None
    if view is not None:
        wanted = np.asarray(view["sample_ids"], dtype=object)
        ids = wanted[pd.Index(samples["sample_id"].to_numpy()).get_indexer(wanted) >= 0]
    elif project.is_indexed:
        held = project.orderings()
        by = SIMILARITY_ORDERS.get(sort, held[0])  # a score sort breaks ties in the default order
        if by not in held:
            by, note = held[0], NO_EMBEDDING_ORDER
        ids = np.asarray(project.order(label, by=by), dtype=object)
    else:
        subset = samples if label is None else samples[samples["label"] == label]
        ids = subset["sample_id"].to_numpy(dtype=object)
        note = "The project is not indexed yet: images are in file order. Index it to see similar images side by side."
    if sort not in SIMILARITY_ORDERS and scores is not None and sort in scores.columns:
        by_id = scores.drop_duplicates("sample_id").set_index("sample_id")[sort]
        values = by_id.reindex(ids).to_numpy(dtype=float)
        ids = ids[np.argsort(np.where(np.isnan(values), -np.inf, -values), kind="stable")]
    return ids, note


ORDER_FILES = ("samples.parquet", "orders/orders.json", "orders/orders.key.json", "orders/by-embedding/orders.json",
               "orders/by-embedding/orders.key.json", "scores.parquet")


@st.cache_resource(show_spinner=False, max_entries=16)
def _ordering(project_dir: str, stamp: tuple, label: str | None, view_key: tuple | None, sort: str,
              _project, _view, _scores) -> tuple[np.ndarray, pd.Index, str | None]:
    ids, note = ordered_ids(_project, label, _view, sort, _scores)
    return ids, pd.Index(ids), note


def ordering(project: Project, label: str | None, view_name: str, view: dict | None, sort: str,
             scores: pd.DataFrame | None) -> tuple[np.ndarray, pd.Index, str | None]:
    """:func:`ordered_ids` plus a hash index of them, cached while the files that made them are
    unchanged (a class of 100,000 is not re-read and re-hashed at every key press)."""
    from mlfix.ui import loaders

    view_key = (view_name, view.get("created"), len(view["sample_ids"])) if view is not None else None
    return _ordering(str(project.dir), loaders.stamp(project.dir, ORDER_FILES), label, view_key, sort,
                     project, view, scores)


@st.cache_resource(show_spinner=False, max_entries=4)
def _sample_tables(project_dir: str, stamp: tuple, _project) -> tuple[pd.Series, list[str]]:
    samples = _project.samples
    originals = pd.Series(samples["label"].to_numpy(dtype=object), index=samples["sample_id"].to_numpy())
    if len(originals):
        originals.index.get_loc(originals.index[0])  # builds the hash table once, here
    return originals, list(_project.labels)


def sample_tables(project: Project) -> tuple[pd.Series, list[str]]:
    """(given label by sample id, sorted labels), made once per version of samples.parquet."""
    from mlfix.ui import loaders

    return _sample_tables(str(project.dir), loaders.stamp(project.dir, ("samples.parquet",)), project)


def _state_of(store, index: pd.Index, originals: pd.Series) -> pd.DataFrame:
    """The review state (status, current label) of those samples of ``index`` that have decisions,
    by sample id; the others are unreviewed. Costs lookups of the decided ids, not a pass over the
    class (a class of a million images is as fast as one of a hundred)."""
    from mlfix.review.log import derive_state

    log = store.decisions()
    decided = log["sample_id"].unique()
    touched = decided[index.get_indexer(decided) >= 0] if len(decided) else decided
    subset = pd.DataFrame({"sample_id": touched, "label": originals.reindex(touched).to_numpy()})
    return derive_state(log, subset).set_index("sample_id")


def make_items(ids: list[str], urls: list[str], current: pd.DataFrame, originals: pd.Series,
               suggested: pd.Series | None) -> list[dict]:
    """The grid's items: ``{id, url, label, status, new_label, suggested}``."""
    items = []
    for sample_id, url in zip(ids, urls):
        row = current.loc[sample_id] if sample_id in current.index else None
        status = str(row["status"]) if row is not None else "unreviewed"
        label = originals.get(sample_id)
        item = {"id": sample_id, "url": url, "label": None if pd.isna(label) else str(label),
                "status": status,
                "new_label": str(row["label"]) if status == "relabeled" else None}
        if suggested is not None:
            value = suggested.get(sample_id)
            item["suggested"] = None if value is None or pd.isna(value) else str(value)
        items.append(item)
    return items


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
                                  view=view)
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
        near = list(project.neighbours(focus, k=NEIGHBOURS)) if project.is_indexed else []
    except Exception:
        near = []
    if near:
        small = thumbnails.for_project(project, THUMB_SIZE)
        current = _state_of(store, pd.Index(near), originals)
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
    scores = score_table(project)
    # A dense tool: use the width of the window (this style lives only while the page is shown).
    st.html("<style>.block-container{padding:2.2rem 1.5rem 0.5rem 1.5rem;max-width:none}</style>")

    # ---- pickers ---------------------------------------------------------------------------
    conf = confusion_section.confusion_data(project, scores, originals)
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
                                          disabled=cell is not None,
                                          help="Views are published from Python with project.publish_view().")
    view = views.get(view_name) if view_name != BY_CLASS else None
    if cell is not None:
        view_name, view = f"confusion: {cell[0]} → {cell[1]}", cell_ids_view
    label_options = labels + [ALL_IMAGES] if labels else [ALL_IMAGES]
    label = cols[0].selectbox("Class", label_options, key="mlfix_review_class", disabled=view is not None,
                              help="Images whose given label is this class.")
    sort = cols[1].selectbox("Sort by", list(SIMILARITY_ORDERS) + score_columns(scores), key="mlfix_review_sort",
                             help="Similarity: similar images side by side, by the pooled embedding (the "
                                  "default: more neighbours of the same class) or by shared visual words. "
                                  "A score: most likely mislabeled first. A confusion cell opens most "
                                  "suspicious first.")
    page_size = cols[2].selectbox("Per page", PAGE_SIZES, index=len(PAGE_SIZES) - 1, key="mlfix_review_size")
    scores_job.offer(project, scores)  # no scores yet: compute them in the background
    confusion_section.section(project, scores, conf, cell)

    ids, id_index, note = ordering(project, None if label == ALL_IMAGES else label, view_name, view, sort,
                                   scores)
    context = (view_name, label, sort, page_size)
    if st.session_state.get(CONTEXT_KEY) != context:
        st.session_state[CONTEXT_KEY] = context
        st.session_state[PAGE_KEY] = 0
    pages = max(1, math.ceil(len(ids) / page_size))
    page = min(max(0, int(st.session_state.get(PAGE_KEY, 0))), pages - 1)
    st.session_state[PAGE_KEY] = page
    if len(ids):  # with several reviewers, the page on screen is this reviewer's for a while
        page = team.claim_page(store, f"{view_name if view is not None else label} · {sort} · {page_size}",
                               page, pages, access.reviewer(), PAGE_KEY)
        if page is None:
            return
    cols[3].button("Prev", key="mlfix_review_prev", icon=":material/chevron_left:", on_click=_turn_page,
                   args=(-1,), disabled=page == 0, width="stretch", help="Previous page (p)")
    cols[4].button("Next", key="mlfix_review_next", icon=":material/chevron_right:", on_click=_turn_page,
                   args=(1,), disabled=page >= pages - 1, width="stretch", help="Next page (n)")
    if note:
        st.caption(note)
    if view is not None and view.get("note"):
        st.caption(f"View **{view_name}**: {view['note']}")
    if len(ids) == 0:
        st.info("No images here.")
        return

    # ---- the grid ----------------------------------------------------------------------------
    page_ids = [str(s) for s in ids[page * page_size:(page + 1) * page_size]]
    static_dir = grid.static_serving_dir()

    def url_for(cache, some_ids):
        return grid.thumbnail_urls(cache, some_ids, static_dir)

    urls = url_for(thumbnails.for_project(project, THUMB_SIZE), page_ids)
    current = team.read_or(lambda: _state_of(store, id_index, originals),
                           lambda: pd.DataFrame(columns=["label", "status"]), key=str(context))
    indexed_scores = scores_by_id(project, scores)
    suggested = None
    if indexed_scores is not None and "suggested_label" in indexed_scores.columns:
        suggested = indexed_scores["suggested_label"]
    items = make_items(page_ids, urls, current, originals, suggested)
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
    grid.render(key=GRID_KEY, view=f"{context}|{page}", items=items, palette=grid.palette(labels),
                counter={"reviewed": reviewed, "total": len(ids), "title": title},
                page={"index": page, "count": pages}, acks=dict(_applier().last_seq), panel=panel,
                errors=errors, show_labels=view is not None or label == ALL_IMAGES,
                show_suggested=sort not in SIMILARITY_ORDERS or cell is not None,
                batches=st.session_state.get(BATCHES_KEY, 0),
                on_actions=lambda: _apply_actions(project, store, labels,
                                                  view_name if view is not None else None))
    if static_dir is None:
        st.caption("Tip: set `server.enableStaticServing = true` in `.streamlit/config.toml` for faster "
                   "thumbnails.")


main()
