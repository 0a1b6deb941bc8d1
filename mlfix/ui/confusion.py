"""The confusion view of the Review page: given label x predicted label, and a cell's samples.

Pure functions (no Streamlit), so they are tested without an app. The page (app_pages/review.py)
draws :func:`figure` with ``st.plotly_chart(on_select=...)`` and opens a clicked cell's
:func:`cell_ids` in the grid, like a published view.

Where the numbers come from: the scores table (``scores.parquet``). Its ``label`` column is the label
the scores were computed against (the given label, with reviewers' corrections at that time), and the
prediction is the out-of-fold argmax of the linear probe (``suggested_cleanlab`` or
``suggested_loss``; the default ``suggested_label`` when neither was computed). Counting and listing
a cell are :func:`mlfix.scoring.confusion.confusion` and :func:`mlfix.scoring.confusion.confusion_samples`.

Why a scatter on top of the heatmap: Plotly heatmaps send no selection events (streamlit issue
#8760), so each non-empty cell also has an invisible square marker that carries ``customdata =
[row, column, count]``; clicking it is a point selection that :func:`cell_of_points` reads back.

Example:
    >>> scores = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": ["cat", "cat", "dog", None],
    ...                        "score": [.2, .9, .1, .5], "suggested_loss": ["dog", "cat", "dog", "cat"]})
    >>> frame = confusion_frame(scores)
    >>> cells(counts(frame))
    [('cat', 'dog', 1)]
    >>> cell_ids(frame, "cat", "dog"), cell_name("cat", "dog", 1)
    (['a'], 'cat → dog (1)')
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.confusion import confusion, confusion_samples
from mlfix.ui.text import html_text

# Which column holds the prediction, best first, and how the page names it.
PREDICTED_COLUMNS = {
    "suggested_cleanlab": "the linear probe's out-of-fold prediction",
    "suggested_loss": "the linear probe's out-of-fold prediction",
    "suggested_label": "the default score's suggested label",
}
ORDER_COLUMN = "score"  # a cell opens most suspicious first by the default (combined) score
CELL_PX = 28  # a cell's side in pixels while the matrix is small
MAX_PLOT_PX = 640  # the plotting area never grows beyond this; cells shrink instead
TEXT_MIN_PX = 18  # counts are written in cells at least this big
MAX_CLASSES = 40  # more classes: the heatmap shows those with the most disagreements (cells stay clickable)
MAX_PICKS = 300  # the picker lists the largest cells only
OFF_COLORS = [[0.0, "#fdd9b5"], [0.5, "#f0703c"], [1.0, "#a50f15"]]  # 1 error is already visible
DIAGONAL_COLOR = "#eceff3"  # agreements: neutral grey, their count in grey text


def predicted_column(scores: pd.DataFrame) -> str | None:
    """The scores column with the predicted label, or None when the table has none."""
    return next((c for c in PREDICTED_COLUMNS if c in scores.columns), None)


def confusion_frame(scores: pd.DataFrame, labels: pd.Series | None = None) -> pd.DataFrame | None:
    """``DataFrame[sample_id, given, predicted, order]`` of the scored samples, or None when the scores
    hold no prediction. ``labels`` (given label by sample id) is used only when ``scores`` has no
    ``label`` column. Unlabeled samples stay in the frame; counting and listing skip them."""
    column = predicted_column(scores)
    if column is None or "sample_id" not in scores.columns:
        return None
    if "label" in scores.columns:
        given = _strings(scores["label"])
    elif labels is not None:
        given = labels.reindex(scores["sample_id"]).to_numpy(dtype=object)
    else:
        return None
    order = (scores[ORDER_COLUMN].to_numpy(dtype=float) if ORDER_COLUMN in scores.columns
             else np.zeros(len(scores)))
    return pd.DataFrame({"sample_id": _strings(scores["sample_id"]), "given": given,
                         "predicted": _strings(scores[column]), "order": order})


def _strings(column: pd.Series):
    """A str or categorical column as it is (no Python object per row: 10M rows would make 0.6 GB of
    them; a categorical's counting makes one reference a row to its few names), any other as objects."""
    kept = isinstance(column.dtype, (pd.StringDtype, pd.CategoricalDtype))
    return column.array if kept else column.to_numpy(dtype=object)


def _objects(column: pd.Series):
    """A categorical column as objects that refer to its few names (listing a categorical makes a str
    a row: gigabytes at 10M rows), None where missing; any other column as it is."""
    if not isinstance(column.dtype, pd.CategoricalDtype):
        return column
    names = np.append(np.asarray(column.cat.categories, dtype=object), np.array([None], dtype=object))
    return names[column.cat.codes.to_numpy()]  # code -1 (missing) picks the None at the end


def counts(frame: pd.DataFrame) -> pd.DataFrame:
    """``DataFrame[given, predicted, count]``, every pair of classes (see mlfix.scoring.confusion.confusion)."""
    return confusion(_objects(frame["given"]), _objects(frame["predicted"]))


def classes(table: pd.DataFrame) -> list:
    """The classes of a :func:`counts` table, in its (sorted) order."""
    return list(dict.fromkeys(table["given"]))


def cells(table: pd.DataFrame, diagonal: bool = False) -> list[tuple[Any, Any, int]]:
    """Non-empty cells ``(given, predicted, count)``, largest first (ties by class order); the
    diagonal (agreements) only when asked."""
    keep = table[(table["count"] > 0) & (diagonal | (table["given"] != table["predicted"]))]
    keep = keep.sort_values("count", ascending=False, kind="stable")
    return [(g, p, int(n)) for g, p, n in keep[["given", "predicted", "count"]].itertuples(index=False)]


def top_classes(table: pd.DataFrame, k: int = MAX_CLASSES, keep: Iterable = ()) -> list:
    """At most ``k`` classes, in class order: those in the most disagreements (given or predicted),
    plus ``keep`` (the open cell's classes). All of them when there are ``k`` or fewer."""
    names = classes(table)
    if len(names) <= k:
        return names
    off = table[table["given"] != table["predicted"]]
    errors = off.groupby("given")["count"].sum().add(off.groupby("predicted")["count"].sum(), fill_value=0)
    wanted = [c for c in keep if c in errors.index]
    ranked = errors.reindex(names).fillna(0).sort_values(ascending=False, kind="stable").index
    chosen = set(wanted) | set(list(ranked[: max(0, k - len(wanted))]))
    return [c for c in names if c in chosen]


def cell_name(given, predicted, count: int) -> str:
    """How a cell reads in a picker: ``"cat → dog (37)"``."""
    return f"{given} → {predicted} ({count})"


def cell_ids(frame: pd.DataFrame, given, predicted) -> list:
    """The sample ids of one cell, most suspicious first (highest ``order``)."""
    return confusion_samples(_objects(frame["given"]), _objects(frame["predicted"]), frame["sample_id"], given,
                             predicted, order=frame["order"])


def cell_px(n_classes: int) -> int:
    """A cell's side in pixels: :data:`CELL_PX`, smaller when that would exceed :data:`MAX_PLOT_PX`."""
    return max(4, min(CELL_PX, MAX_PLOT_PX // max(1, n_classes)))


def figure(table: pd.DataFrame, current: tuple | None = None):
    """The heatmap (a plotly Figure) of a :func:`counts` table: rows given, columns predicted.

    Off-diagonal counts are coloured on a log scale (one error is visible next to hundreds); the
    diagonal is masked to a neutral grey, its count in grey text, so disagreements stand out.
    ``current`` = ``(given, predicted)`` outlines the open cell. Beyond :data:`MAX_CLASSES` classes
    only those of :func:`top_classes` are drawn (a 1000-class matrix would be megabytes per rerun).
    """
    import plotly.graph_objects as go

    names = top_classes(table, keep=current or ())
    n = len(names)
    grid = table.pivot(index="given", columns="predicted", values="count").reindex(index=names, columns=names)
    z = grid.to_numpy(dtype=float)
    diag = np.eye(n, dtype=bool)
    labels = [html_text(c) for c in names]  # Plotly renders <a href>, <b> in ticks and hover: shown as text
    px = cell_px(n)
    text = np.where(z > 0, z.astype(np.int64).astype(str), "") if px >= TEXT_MIN_PX else None
    off = np.where(~diag & (z > 0), np.log10(np.maximum(z, 1)), np.nan)
    top = max(1.0, float(np.nanmax(off)) if np.isfinite(off).any() else 1.0)
    on = np.where(diag, 1.0, np.nan)
    common = dict(x=labels, y=labels, xgap=1, ygap=1, showscale=False, hoverinfo="skip")
    fig = go.Figure([
        go.Heatmap(z=on, colorscale=[[0, DIAGONAL_COLOR], [1, DIAGONAL_COLOR]],
                   text=None if text is None else np.where(diag, text, ""), texttemplate="%{text}",
                   textfont={"color": "#8a929c", "size": 11}, **common),
        go.Heatmap(z=off, colorscale=OFF_COLORS, zmin=0, zmax=top,
                   text=None if text is None else np.where(diag, "", text), texttemplate="%{text}",
                   textfont={"size": 12}, **common),
        _click_targets(z, labels, px),
    ])
    plot = n * px
    fig.update_layout(
        width=plot + 150, height=plot + 90, margin={"l": 10, "r": 10, "t": 10, "b": 10},
        plot_bgcolor="#ffffff", paper_bgcolor="rgba(0,0,0,0)", showlegend=False,
        hovermode="closest", clickmode="event+select", dragmode=False,
        xaxis={"title": {"text": "predicted", "standoff": 4}, "side": "top", "type": "category",
               "categoryorder": "array", "categoryarray": labels, "fixedrange": True, "showgrid": False,
               "tickangle": -45 if max(map(len, labels), default=0) > 3 else 0},
        yaxis={"title": {"text": "given label", "standoff": 4}, "type": "category", "categoryorder": "array",
               "categoryarray": labels, "autorange": "reversed", "fixedrange": True, "showgrid": False},
    )
    if current is not None and current[0] in names and current[1] in names:
        i, j = names.index(current[0]), names.index(current[1])
        fig.add_shape(type="rect", x0=j - .5, x1=j + .5, y0=i - .5, y1=i + .5, xref="x", yref="y",
                      line={"color": "#1c7ed6", "width": 3}, fillcolor="rgba(0,0,0,0)")
    return fig


def _click_targets(z: np.ndarray, labels: list[str], px: int):
    """Invisible square markers over the non-empty cells: the part of the chart that selects."""
    import plotly.graph_objects as go

    rows, cols = np.nonzero(z > 0)
    return go.Scatter(
        x=[labels[j] for j in cols], y=[labels[i] for i in rows], mode="markers",
        marker={"symbol": "square", "size": px, "color": "rgba(0,0,0,0)"},
        customdata=np.stack([rows, cols, z[rows, cols].astype(np.int64)], axis=1).tolist(),
        hovertemplate="given <b>%{y}</b>, predicted <b>%{x}</b><br>%{customdata[2]} images"
                      "<br>click to open them<extra></extra>",
        selected={"marker": {"opacity": 1}}, unselected={"marker": {"opacity": 1}},
    )


def cell_of_points(points: Iterable[dict] | None, names: Sequence) -> tuple | None:
    """The ``(given, predicted)`` cell of the first selected point of :func:`figure`'s click targets
    (Streamlit's ``event.selection.points``), or None."""
    for point in points or ():
        data = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(data, (list, tuple)) and len(data) >= 2:
            i, j = data[0], data[1]
            if _is_index(i, len(names)) and _is_index(j, len(names)):
                return names[int(i)], names[int(j)]
    return None


def _is_index(value, n: int) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value == int(value) and 0 <= int(value) < n
