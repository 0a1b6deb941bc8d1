"""The confusion view: given x predicted counts, a cell's samples, and the Review page opening a cell.

Unit tests for :mod:`mlfix.ui.confusion` (no Streamlit), AppTest tests of the page (the fallback
picker drives it; the grid is read as in tests/ui/test_review_page.py), and one browser test that clicks
a heatmap cell.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlfix.ui import confusion

CLASSES = ["cat", "dog", "fox"]


def random_scores(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A scores table with noisy predictions, some unlabeled samples and some NaN scores."""
    rng = np.random.default_rng(seed)
    label = rng.choice(CLASSES, n).astype(object)
    label[rng.random(n) < 0.1] = None
    predicted = np.where(rng.random(n) < 0.7, label, rng.choice(CLASSES, n)).astype(object)
    predicted[pd.isna(predicted)] = "cat"  # unlabeled samples still get a prediction
    score = rng.random(n)
    score[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({"sample_id": [f"s{i:03d}" for i in range(n)], "label": label, "score": score,
                         "suggested_label": rng.choice(CLASSES, n), "suggested_cleanlab": predicted})


# ------------------------------------------------------------------------------------ pure module


def test_a_cell_holds_exactly_the_samples_with_that_given_and_predicted_label():
    scores = random_scores()
    frame = confusion.confusion_frame(scores)
    table = confusion.counts(frame)
    for given in CLASSES:
        for predicted in CLASSES:
            got = confusion.cell_ids(frame, given, predicted)
            mask = (scores["label"] == given) & (scores["suggested_cleanlab"] == predicted)
            assert sorted(got) == sorted(scores.loc[mask, "sample_id"])
            count = table.loc[(table["given"] == given) & (table["predicted"] == predicted), "count"]
            assert int(count.iloc[0]) == len(got)
            # most suspicious first, unscored (NaN) last
            values = scores.set_index("sample_id").loc[got, "score"].to_numpy()
            finite = values[~np.isnan(values)]
            assert np.all(np.diff(finite) <= 0) and not np.isnan(values[: len(finite)]).any()


def test_the_prediction_comes_from_the_probe_when_the_scores_have_it():
    scores = random_scores()
    assert confusion.predicted_column(scores) == "suggested_cleanlab"
    assert confusion.predicted_column(scores.drop(columns="suggested_cleanlab")) == "suggested_label"
    frame = confusion.confusion_frame(scores)
    assert frame["predicted"].tolist() == scores["suggested_cleanlab"].tolist()
    assert confusion.confusion_frame(scores[["sample_id", "label", "score"]]) is None


def test_without_a_label_column_the_given_labels_come_from_the_samples():
    scores = random_scores()
    originals = pd.Series(scores["label"].to_numpy(), index=scores["sample_id"].to_numpy())[::-1]
    frame = confusion.confusion_frame(scores.drop(columns="label"), originals)
    assert frame["given"].tolist() == scores["label"].tolist()
    assert confusion.confusion_frame(scores.drop(columns="label")) is None


def test_unlabeled_samples_are_in_no_cell():
    scores = random_scores()
    frame = confusion.confusion_frame(scores)
    table = confusion.counts(frame)
    unlabeled = set(scores.loc[scores["label"].isna(), "sample_id"])
    assert unlabeled and int(table["count"].sum()) == len(scores) - len(unlabeled)
    in_cells = {s for g in CLASSES for p in CLASSES for s in confusion.cell_ids(frame, g, p)}
    assert not in_cells & unlabeled


def test_cells_leave_out_the_diagonal_and_come_largest_first():
    table = pd.DataFrame({"given": ["a", "a", "b", "b"], "predicted": ["a", "b", "a", "b"],
                          "count": [50, 2, 7, 40]})
    assert confusion.cells(table) == [("b", "a", 7), ("a", "b", 2)]
    assert confusion.cells(table, diagonal=True)[0] == ("a", "a", 50)
    empty = table.assign(count=[5, 0, 0, 5])
    assert confusion.cells(empty) == []
    assert confusion.cell_name("b", "a", 7) == "b → a (7)"


def test_the_heatmap_masks_the_diagonal_and_each_non_empty_cell_is_clickable():
    table = pd.DataFrame({"given": ["a", "a", "b", "b"], "predicted": ["a", "b", "a", "b"],
                          "count": [50, 0, 7, 40]})
    fig = confusion.figure(table)
    diagonal, off, targets = fig.data
    assert np.isnan(np.asarray(off.z, dtype=float)[[0, 1], [0, 1]]).all()  # no colour on the diagonal
    assert np.isnan(np.asarray(off.z, dtype=float)[0, 1])  # an empty cell has no colour either
    assert np.isfinite(np.asarray(off.z, dtype=float)[1, 0])
    assert np.isnan(np.asarray(diagonal.z, dtype=float)[[1, 0], [0, 1]]).all()
    assert [list(d) for d in targets.customdata] == [[0, 0, 50], [1, 0, 7], [1, 1, 40]]
    assert list(zip(targets.y, targets.x)) == [("a", "a"), ("b", "a"), ("b", "b")]
    assert not fig.layout.shapes
    outlined = confusion.figure(table, current=("b", "a")).layout.shapes[0]
    assert (outlined.x0, outlined.y0) == (-0.5, 0.5)


def test_a_clicked_point_is_read_back_as_its_cell():
    names = ["a", "b"]
    assert confusion.cell_of_points([{"customdata": [1, 0, 7], "x": "a", "y": "b"}], names) == ("b", "a")
    assert confusion.cell_of_points([], names) is None
    assert confusion.cell_of_points(None, names) is None
    assert confusion.cell_of_points([{"x": "a", "y": "b"}], names) is None  # the heatmap itself
    assert confusion.cell_of_points([{"customdata": [5, 0, 1]}], names) is None
    assert confusion.cell_of_points([{"customdata": ["1", 0]}], names) is None


def test_large_matrices_draw_the_classes_in_most_disagreements_with_smaller_cells():
    labels = [f"c{i:03d}" for i in range(100)]
    rng = np.random.default_rng(0)
    table = pd.DataFrame([(g, p, 50 if g == p else int(rng.integers(0, 2))) for g in labels for p in labels],
                         columns=["given", "predicted", "count"])
    busy = ["c007", "c042", "c093"]
    table.loc[table["given"].isin(busy) & (table["given"] != table["predicted"]), "count"] += 20
    top = confusion.top_classes(table, k=10)
    assert len(top) == 10 and set(busy) <= set(top) and top == sorted(top)
    assert "c000" in confusion.top_classes(table, k=10, keep=("c000", "c007"))
    assert confusion.top_classes(table, k=100) == labels

    fig = confusion.figure(table)
    assert len(fig.data[0].x) == confusion.MAX_CLASSES
    small = confusion.figure(table.assign(count=1))  # no class stands out: still at most the cap
    assert len(small.data[0].x) == confusion.MAX_CLASSES
    assert confusion.cell_px(100) < confusion.TEXT_MIN_PX <= confusion.cell_px(10)
    assert fig.layout.height <= confusion.MAX_PLOT_PX + 200


# ------------------------------------------------------------------------------------ the page


PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "review.py")


@pytest.fixture
def project(demo_project, tmp_path):
    """A private copy of the indexed demo project (it has scores)."""
    from mlfix.project import Project

    skip = shutil.ignore_patterns("images", "thumbs", "reviews.db*", "cells.npy", "progress")
    shutil.copytree(demo_project.dir, tmp_path / "project", ignore=skip)
    return Project.open(tmp_path / "project")


def run_page(project_dir):
    from tests.ui.test_review_page import run_page as run

    return run(project_dir)


def test_picking_a_cell_shows_exactly_its_samples_and_back_returns_to_the_class(project):
    from tests.ui.test_review_page import grid_data, selectbox

    scores = project.cached_scores()
    at = run_page(project.dir)
    class_view = [item["id"] for item in grid_data(at)["items"]]
    picker = selectbox(at, "Confusion cell")
    assert picker.value == "(pick a cell)" and len(picker.options) > 1
    option = picker.options[1]  # the largest off-diagonal cell
    given, rest = option.split(" → ")
    predicted, count = rest.rsplit(" (", 1)
    picker.set_value(option)
    at.run()
    assert not at.exception, at.exception

    data = grid_data(at)
    mask = (scores["label"] == given) & (scores["suggested_cleanlab"] == predicted)
    expected = scores[mask].sort_values("score", ascending=False, kind="stable")["sample_id"].tolist()
    assert len(expected) == int(count.rstrip(")")) and given != predicted
    assert [item["id"] for item in data["items"]] == expected
    assert data["counter"]["title"] == f"Confusion: {given} → {predicted}"
    assert data["counter"]["total"] == len(expected)
    assert selectbox(at, "Class").disabled

    next(b for b in at.button if b.label == "Classes").click()
    at.run()
    assert [item["id"] for item in grid_data(at)["items"]] == class_view
    assert selectbox(at, "Confusion cell").value == "(pick a cell)"
    assert not any(b.label == "Classes" for b in at.button)


def test_without_scores_the_page_says_how_to_compute_them(project):
    from tests.ui.test_review_page import grid_data

    (project.dir / "scores.parquet").unlink()
    at = run_page(project.dir)
    assert grid_data(at)["items"]  # the grid still works
    assert any("mlfix scores --project" in c.value for c in at.caption)
    assert not [s for s in at.selectbox if s.label == "Confusion cell"]


# ------------------------------------------------------------------------------------ browser


@pytest.mark.browser
@pytest.mark.slow
def test_clicking_a_heatmap_cell_opens_it_in_the_grid(project, tmp_path):
    from tests.ui.test_browser_review import OUTPUT, poll, review_page, serving

    table = confusion.counts(confusion.confusion_frame(project.cached_scores()))
    given, predicted, count = confusion.cells(table)[0]
    OUTPUT.mkdir(exist_ok=True)
    with serving(project.dir, tmp_path) as url, review_page(url) as page:
        page.get_by_text("Confusion: given vs predicted").click()
        chart = page.locator(".js-plotly-plot").first
        chart.wait_for(timeout=20_000)
        # let the expander finish opening and the chart finish drawing: a click computed on a moving
        # chart misses its cell
        last = None
        for _ in range(40):
            now = chart.bounding_box()
            if now == last and page.locator(".js-plotly-plot .scatterlayer .point").count():
                break
            last = now
            page.wait_for_timeout(250)
        title = f"Confusion: {given} → {predicted}"
        # under load plotly may attach its click handler after the chart is drawn: a click that
        # opened nothing is tried again (at most 3 times), a cell that never opens still fails
        for _attempt in range(3):
            page.mouse.click(*cell_centre(page, chart, predicted, given))
            if poll(lambda: page.locator(".ctitle").inner_text() == title, timeout=8):
                break
        assert page.locator(".ctitle").inner_text() == title, page.locator(".ctitle").inner_text()
        assert poll(lambda: page.locator(".tile").count() == count, timeout=10)
        page.screenshot(path=str(OUTPUT / "review-confusion.png"))


def cell_centre(page, chart, x: str, y: str) -> tuple[float, float]:
    """The page position of the heatmap cell at categories (x, y): the axes' category positions."""
    box = page.evaluate(
        """([el, x, y]) => { const l = el._fullLayout; const r = el.getBoundingClientRect();
             return [r.left + l._size.l + l.xaxis.d2p(x), r.top + l._size.t + l.yaxis.d2p(y)]; }""",
        [chart.element_handle(), str(x), str(y)])
    page.mouse.move(*box)
    return box
