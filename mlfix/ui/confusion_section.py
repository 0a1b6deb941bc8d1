"""The Review page's confusion section: the heatmap of given label x predicted label and its picker.

A click on a cell (or a pick in the keyboard-friendly selectbox) stores the cell in the session
(:data:`CELL_KEY`); the page then shows that cell's images in the grid, most suspicious first
(:func:`cell_view`). The pure logic (counts, the figure, which cell a click hit) is in
:mod:`mlfix.ui.confusion`; this module holds the Streamlit side: the caches keyed on the version of
scores.parquet, the callbacks and the expander.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from mlfix.ui import confusion, text

if TYPE_CHECKING:
    from mlfix.project import Project

CELL_KEY = "mlfix_review_cell"  # the confusion cell (given, predicted) open in the grid
CELL_PICK_KEY = "mlfix_review_cell_pick"
CHART_KEY = "mlfix_review_confusion"  # + a generation that a new chart (no stale selection) bumps
CHART_GEN_KEY = "mlfix_review_confusion_gen"
NO_CELL = "(pick a cell)"


def scores_stamp(project: Project) -> tuple:
    """The version of scores.parquet: what the confusion view's caches are keyed on."""
    from mlfix.ui import loaders

    return loaders.stamp(project.dir, ("scores.parquet",))


@st.cache_resource(show_spinner=False, max_entries=4)
def _confusion_data(project_dir: str, stamp: tuple, _scores: pd.DataFrame,
                    _originals: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    frame = confusion.confusion_frame(_scores, _originals)
    return None if frame is None else (frame, confusion.counts(frame))


def confusion_data(project: Project, scores: pd.DataFrame | None,
                   originals: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(per-sample frame, counts table) of the confusion view, made once per version of
    scores.parquet; None without scores or without a predicted label in them."""
    if scores is None:
        return None
    return _confusion_data(str(project.dir), scores_stamp(project), scores, originals)


@st.cache_resource(show_spinner=False, max_entries=16)
def _cell_view(project_dir: str, stamp: tuple, given, predicted, _frame: pd.DataFrame) -> dict:
    return {"sample_ids": confusion.cell_ids(_frame, given, predicted), "created": str(stamp)}


def cell_view(project: Project, frame: pd.DataFrame, cell: tuple) -> dict:
    """A confusion cell as a view (``{sample_ids, created}``), most suspicious first."""
    return _cell_view(str(project.dir), scores_stamp(project), cell[0], cell[1], frame)


@st.cache_resource(show_spinner=False, max_entries=8)
def _confusion_figure(project_dir: str, stamp: tuple, current: tuple | None, _table: pd.DataFrame):
    return confusion.figure(_table, current=current)


def open_cell(cell: tuple, names: dict) -> None:
    """Show a confusion cell in the grid; the picker follows (``names``: cell -> picker option)."""
    st.session_state[CELL_KEY] = cell
    st.session_state[CELL_PICK_KEY] = names.get(cell, NO_CELL)


def close_cell() -> None:
    """Back to the class view; a new chart drops the old click."""
    st.session_state.pop(CELL_KEY, None)
    st.session_state[CELL_PICK_KEY] = NO_CELL
    st.session_state[CHART_GEN_KEY] = st.session_state.get(CHART_GEN_KEY, 0) + 1


def _cell_from_chart(key: str, classes: list, names: dict) -> None:
    event = st.session_state.get(key) or {}
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        points = []
    cell = confusion.cell_of_points(points, classes)
    if cell is not None:
        open_cell(cell, names)


def _cell_from_picker(cells: dict) -> None:
    choice = st.session_state.get(CELL_PICK_KEY)
    if choice in cells:
        open_cell(cells[choice], {cell: name for name, cell in cells.items()})
        st.session_state[CHART_GEN_KEY] = st.session_state.get(CHART_GEN_KEY, 0) + 1
    else:
        close_cell()


def section(project: Project, scores: pd.DataFrame | None, data, cell: tuple | None) -> None:
    """The expander with the heatmap and its keyboard-friendly picker (or how to get scores)."""
    with st.expander("Confusion: given vs predicted", icon=":material/grid_on:", expanded=cell is not None):
        if data is None:
            reason = project.scores_unavailable() if scores is None else None
            if reason is not None:  # an unlabeled folder: nothing to confuse
                st.caption(f"This view needs label-error scores. {text.plain(reason[0].upper() + reason[1:])}.")
                return
            what = "No scores yet" if scores is None else "The scores hold no predicted label"
            st.caption(f"{what}: press **Compute scores** above (it runs in the background), or run "
                       f"{text.code(f'mlfix scores --project {project.dir}')} and reload this page. Indexing ends with "
                       "the scores too (`mlfix index`, or the Training page), when the labels name two "
                       "classes or more.")
            return
        _, table = data
        classes = confusion.top_classes(table, keep=cell or ())
        cells = {confusion.cell_name(*c): (c[0], c[1]) for c in confusion.cells(table)[:confusion.MAX_PICKS]}
        names = {c: name for name, c in cells.items()}
        chart, side = st.columns([3, 2])
        figure = _confusion_figure(str(project.dir), scores_stamp(project), cell, table)
        key = f"{CHART_KEY}_{st.session_state.get(CHART_GEN_KEY, 0)}"
        chart.plotly_chart(figure, key=key, on_select=lambda: _cell_from_chart(key, classes, names),
                           selection_mode="points", width="content",
                           config={"displayModeBar": False, "scrollZoom": False})
        if st.session_state.get(CELL_PICK_KEY) not in cells:
            st.session_state[CELL_PICK_KEY] = NO_CELL
        side.selectbox("Confusion cell", [NO_CELL] + list(cells), key=CELL_PICK_KEY, format_func=text.visible,
                       on_change=_cell_from_picker, args=(cells,),
                       help="Given → predicted (images), largest first. Opens those images in the grid.")
        agree = int(table.loc[table["given"] == table["predicted"], "count"].sum())
        total = int(table["count"].sum())
        side.caption(f"Rows: the label the scores were computed against; columns: "
                     f"{predicted_by(project, scores)}. They agree on {agree:,} of "
                     f"{total:,} labeled images. Click a cell, or pick one above, to review its images "
                     "in the grid, most suspicious first. The grey diagonal is agreement.")
        if len(classes) < len(confusion.classes(table)):
            side.caption(f"The heatmap shows the {len(classes)} of {len(confusion.classes(table))} classes in "
                         f"the most disagreements; the picker lists the {len(cells)} largest cells.")


def predicted_by(project: Project, scores: pd.DataFrame) -> str:
    """What the heatmap's columns are: the user's own model when the scores came from its predicted
    probabilities (``project.add_predictions`` / ``mlfix scores --pred-probs``), else the probe's
    out-of-fold prediction; and a note when predictions were added after these scores."""
    column = confusion.predicted_column(scores)
    used, info = project.scores_use_predictions(), project.predictions_info() or {}
    model_column = column in ("suggested_cleanlab", "suggested_loss")
    if used and model_column:
        return (f"the prediction of your own model (the probabilities added as "
                f"{text.plain(repr(str(info.get('name', 'user'))))} on {info.get('added', '?')})")
    described = confusion.PREDICTED_COLUMNS[column]
    if used is False:
        return (f"{described} (your model's probabilities were added since these scores: "
                "press **Compute scores** to use them)")
    return described
