"""The Review page's data: what to show, in which order, with which state; each cached per version of
the files that made it (a key press reruns the page; none of this is recomputed unless a file changed).

Pure of widgets: the page (``app_pages/review.py``) draws, these functions read the project.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from mlfix.errors import MlfixError
from mlfix.project import Project
from mlfix.review.store import ReviewStore

SIMILARITY = "Similarity (embedding)"
SIMILARITY_WORDS = "Similarity (visual words)"
SIMILARITY_COMBINED = "Similarity (embedding + words)"
SIMILARITY_ORDERS = {SIMILARITY_COMBINED: "combined", SIMILARITY: "embedding",
                     SIMILARITY_WORDS: "words"}  # sort option -> Project.order(by=)
NO_EMBEDDING_ORDER = ("This project was indexed before the embedding order existed: showing the visual-word "
                      "order. Index it again (Training page, or `mlfix index`) to add it; the features are reused.")

def similarity_options(project: Project) -> list[str]:
    """The "Sort by" similarity options: the orders the project's index holds, its default first
    (:meth:`Project.orderings`: the combined order where it was built); all of them before an index."""
    held = project.orderings() if project.is_indexed else []
    names = {by: name for name, by in SIMILARITY_ORDERS.items()}
    return [names[by] for by in held if by in names] or list(SIMILARITY_ORDERS)


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


# What the Review page reads of scores.parquet: the ids, the score columns (its "Sort by"), the given label
# and the predicted ones (the grid's hint, the confusion view). The rest (path, flags, reasons, duplicate
# groups) stays on disk, and a label column is read as a categorical: one byte a row, not a str.
REVIEW_LABEL_COLUMNS = ("label", "suggested_label", "suggested_cleanlab", "suggested_loss")


def review_columns(names: list[str]) -> list[str]:
    """The columns of a scores table (``names``) the Review page reads, in the table's order.

    >>> review_columns(["sample_id", "path", "label", "score", "flag_blur", "score_blur", "suggested_knn"])
    ['sample_id', 'label', 'score', 'score_blur']
    """
    return [c for c in names if c == "sample_id" or c in REVIEW_LABEL_COLUMNS or c == "score"
            or c.startswith("score_")]


def review_scores(project: Project) -> pd.DataFrame | None:
    """The project's last computed scores as :func:`score_table` reads them (most suspect first), but
    only :func:`review_columns`, the label columns categorical; made once per version of scores.parquet
    (at 10M samples the whole table as read costs gigabytes; bench/scale_review.py)."""
    from mlfix.ui import loaders

    if not (Path(project.dir) / "scores.parquet").exists():
        return None
    try:
        return _review_scores(str(project.dir), loaders.stamp(project.dir, ("scores.parquet",)))
    except Exception:  # scores being rewritten, or an old format: sort by similarity only
        return None


@st.cache_resource(show_spinner=False, max_entries=4)
def _review_scores(project_dir: str, stamp: tuple) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    path = Path(project_dir) / "scores.parquet"
    columns = review_columns(pq.read_schema(path).names)
    if "sample_id" not in columns:
        return None
    labels = [c for c in columns if c in REVIEW_LABEL_COLUMNS]
    return pd.read_parquet(path, columns=columns, read_dictionary=labels)  # dictionary -> categorical


@st.cache_resource(show_spinner=False, max_entries=4)
def _scores_by_id(project_dir: str, stamp: tuple, _scores: pd.DataFrame, _index: pd.Index) -> pd.DataFrame:
    rows = _index.get_indexer(_scores["sample_id"]) if _index.is_unique else None
    if rows is not None and len(rows) == len(_index) and (rows >= 0).all():
        seen = np.zeros(len(_index), dtype=bool)
        seen[rows] = True
        if seen.all():  # one score row per sample: look them up through the samples' own hash table
            order = np.empty_like(rows)  # (a second one of 10M ids costs over a GB)
            order[rows] = np.arange(len(rows))
            return _scores.drop(columns="sample_id").take(order).set_axis(_index.rename("sample_id"))
    return _scores.drop_duplicates("sample_id").set_index("sample_id")


def scores_by_id(project: Project, scores: pd.DataFrame | None) -> pd.DataFrame | None:
    """The scores indexed by sample id (made once per version of scores.parquet and samples.parquet)."""
    from mlfix.ui import loaders

    if scores is None:
        return None
    index = sample_tables(project)[0].index
    return _scores_by_id(str(project.dir), loaders.stamp(project.dir, ("scores.parquet", "samples.parquet")),
                         scores, index)


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
        by = by if by in held else held[0]
        note = None if "embedding" in held else NO_EMBEDDING_ORDER  # an index older than the embedding order
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
              _project, _view, _scores) -> tuple[np.ndarray, pd.Index, str | None, np.ndarray]:
    ids, note = ordered_ids(_project, label, _view, sort, _scores)
    originals = sample_tables(_project)[0]  # its index is project.samples' sample_id, row for row
    return ids, pd.Index(ids), note, originals.index.get_indexer(ids).astype(np.int64)


def ordering(project: Project, label: str | None, view_name: str, view: dict | None, sort: str,
             scores: pd.DataFrame | None) -> tuple[np.ndarray, pd.Index, str | None, np.ndarray]:
    """:func:`ordered_ids`, a hash index of them and their rows in ``project.samples`` (-1: none), cached
    while the files that made them are unchanged: a key press costs O(page), not a pass over the class
    (at 10M images a pass over the ids costs seconds; bench/scale_review.py)."""
    from mlfix.ui import loaders

    view_key = (view_name, view.get("created"), len(view["sample_ids"])) if view is not None else None
    return _ordering(str(project.dir), loaders.stamp(project.dir, ORDER_FILES), label, view_key, sort,
                     project, view, scores)


@st.cache_resource(show_spinner=False, max_entries=16)
def _runs(project_dir: str, stamp: tuple, label: str | None, by: str, _project) -> np.ndarray:
    return _project.runs(label, by)


def page_runs(project: Project, label: str | None, sort: str, view: dict | None,
              positions: np.ndarray) -> list | None:
    """Run ids at ``positions`` of a class's (or all images') similarity order, for the grid's breaks
    and its ``r`` key; None where there are no runs (a score sort, a view, no index)."""
    from mlfix.ui import loaders

    held = project.orderings() if view is None and sort in SIMILARITY_ORDERS and project.is_indexed else []
    if not held:
        return None
    by = SIMILARITY_ORDERS[sort] if SIMILARITY_ORDERS[sort] in held else held[0]
    files = ORDER_FILES + ("features/pooled.npy",)
    try:
        runs = _runs(str(project.dir), loaders.stamp(project.dir, files), label, by, project)
    except (KeyError, ValueError, OSError, MlfixError):  # e.g. a class added in the app: no order, no runs
        return None
    return runs[positions].tolist()


@st.cache_data(show_spinner=False, max_entries=256)
def _neighbours(project_dir: str, stamp: tuple, sample_id: str, k: int, _project) -> list[str]:
    return list(_project.neighbours(sample_id, k=k))


def neighbours(project: Project, sample_id: str, k: int) -> list[str]:
    """``project.neighbours(sample_id, k)``, cached per version of the features: a key press that
    keeps the focus searches nothing (a search is a pass over the embeddings: ~0.1 s at 1M)."""
    from mlfix.ui import loaders

    files = ("samples.parquet", "features/pooled.npy", "features/ok.npy")
    return _neighbours(str(project.dir), loaders.stamp(project.dir, files), sample_id, k, project)


@st.cache_resource(show_spinner=False, max_entries=4)
def _sample_tables(project_dir: str, stamp: tuple, _project) -> tuple[pd.Series, list[str]]:
    samples = _project.samples
    # One str object per class, not one per sample (10M samples: 0.6 GB less); a missing label as it reads.
    codes, names = pd.factorize(samples["label"])
    missing = np.flatnonzero(codes < 0)
    fill = samples["label"].iloc[missing[0]] if len(missing) else None
    labels = np.append(np.asarray(names, dtype=object), np.array([fill], dtype=object))[codes]
    originals = pd.Series(labels, index=samples["sample_id"].to_numpy())
    if len(originals):
        originals.index.get_loc(originals.index[0])  # builds the hash table once, here
    # Project.row_of would hash every sample id again (over a GB at 10M): give it this index (the same
    # positions by sample id it builds itself; dropped by the project when samples.parquet changes).
    rows = np.arange(len(originals), dtype=np.int32 if len(originals) < 2**31 else np.int64)  # 40 MB less at 10M
    _project._cache.setdefault("row_of", pd.Series(rows, index=originals.index))
    return originals, list(_project.labels)


def sample_tables(project: Project) -> tuple[pd.Series, list[str]]:
    """(given label by sample id, sorted labels), made once per version of samples.parquet."""
    from mlfix.ui import loaders

    return _sample_tables(str(project.dir), loaders.stamp(project.dir, ("samples.parquet",)), project)


def state_of(store, index: pd.Index, originals: pd.Series) -> pd.DataFrame:
    """The review state (status, current label) of those samples of ``index`` that have decisions,
    by sample id; the others are unreviewed. Costs lookups of the decided ids, not a pass over the
    class (a class of a million images is as fast as one of a hundred)."""
    from mlfix.review.classes import effective_log, read_events
    from mlfix.review.log import derive_state

    log = store.decisions()
    decided = log["sample_id"].unique()
    touched = decided[index.get_indexer(decided) >= 0] if len(decided) else decided
    subset = pd.DataFrame({"sample_id": touched, "label": originals.reindex(touched).to_numpy()})
    base = store.labels if store.labels is not None else originals.dropna().unique()
    log = effective_log(log, read_events(store), base)  # relabels read through class renames and merges
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
