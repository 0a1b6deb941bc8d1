"""The Review page of a large project: a rerun (a key press) costs O(page), not O(images).

Timing is bench/scale_review.py's (a rerun under 1 s at 10M images); these tests pin the cause
without a clock: on a rerun nothing N-sized is read, ordered or looked up again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.scale_review import build_project
from mlfix.project import Project
from mlfix.review import classes as class_events
from mlfix.review.store import ReviewStore
from mlfix.ui import review_data

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "review.py")
N = 20_000  # 10 classes of 2,000: ten pages of 200 per class
PAGE_SIZE = 200


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    return build_project(tmp_path_factory.mktemp("large"), N)


def _page(folder: Path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["mlfix_project_dir"] = str(folder)
    at.session_state["mlfix_reviewer"] = "ann"
    at.run()
    assert not at.exception, at.exception
    return at


def _grid(at) -> dict:
    [element] = at.get("bidi_component")
    return json.loads(element.proto.json)


class Calls:
    """Counts calls of the N-sized loaders and the largest lookup a run makes."""

    def __init__(self, monkeypatch):
        self.counts: dict[str, int] = {}
        self.largest_lookup = 0
        for owner, name in ((Project, "order_rows"), (Project, "runs"), (Project, "neighbours"),
                            (review_data, "ordered_ids"), (class_events, "effective_labels"), (pd, "read_parquet")):
            monkeypatch.setattr(owner, name, self._counted(name, getattr(owner, name)))
        get_indexer = pd.Index.get_indexer

        def lookup(index, target, *args, **kwargs):
            self.largest_lookup = max(self.largest_lookup, len(target))
            return get_indexer(index, target, *args, **kwargs)

        monkeypatch.setattr(pd.Index, "get_indexer", lookup)

    def _counted(self, name, fn):
        def counted(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return counted


def test_the_synthetic_project_opens_on_the_first_class_in_similarity_order(large):
    at = _page(large)
    data = _grid(at)
    project = Project.open(large)
    expected = project.order("class0")[:PAGE_SIZE].tolist()
    assert [item["id"] for item in data["items"]] == expected
    assert data["counter"]["total"] == N // 10 and data["page"] == {"index": 0, "count": 10}
    assert len(project.samples) == N and project.orderings() == ["embedding", "words"]
    assert data["panel"]["id"] == expected[0] and len(data["panel"]["neighbours"]) == 8


def test_a_rerun_after_a_decision_reads_orders_and_looks_up_nothing_n_sized(large, monkeypatch):
    at = _page(large)
    first = _grid(at)["items"][3]["id"]
    calls = Calls(monkeypatch)
    with ReviewStore.for_project(large) as store:
        store.decide([first], "ok", reviewer="ann")
    at.run()
    assert not at.exception, at.exception
    assert calls.counts == {}  # no parquet read, no order, no runs, no neighbour search
    assert 0 < calls.largest_lookup <= PAGE_SIZE  # lookups of the page's ids, never of the class's
    item = next(i for i in _grid(at)["items"] if i["id"] == first)
    assert item["status"] == "ok"


def test_the_next_page_costs_a_page_too(large, monkeypatch):
    at = _page(large)
    expected = Project.open(large).order("class0")[PAGE_SIZE:2 * PAGE_SIZE].tolist()
    calls = Calls(monkeypatch)
    next(b for b in at.button if b.label == "Next").click().run()
    assert not at.exception, at.exception
    data = _grid(at)
    assert data["page"]["index"] == 1
    assert [i["id"] for i in data["items"]] == expected
    # the new focus needs one neighbour search; nothing else is read or ordered again
    assert calls.counts == {"neighbours": 1}
    assert calls.largest_lookup <= PAGE_SIZE


def test_a_renamed_class_maps_the_given_labels_once(tmp_path, monkeypatch):
    folder = build_project(tmp_path, 2_000)
    at = _page(folder)
    with ReviewStore.for_project(folder) as store:
        class_events.record_event(store, [f"class{c}" for c in range(10)], "rename", "class0", "zero",
                                  reviewer="ann")
    at.run()  # the rename is read: the labels are mapped here, once
    assert not at.exception, at.exception
    calls = Calls(monkeypatch)
    at.run()
    assert not at.exception, at.exception
    assert "effective_labels" not in calls.counts
    assert {i["label"] for i in _grid(at)["items"]} == {"zero"}  # the first class, as renamed


def test_the_page_reads_only_the_score_columns_it_shows_with_categorical_labels(tmp_path, monkeypatch):
    folder = build_project(tmp_path, 2_000)
    path = folder / "scores.parquet"
    scores = pd.read_parquet(path)
    scores.insert(1, "path", "img/0.png")  # as a real table: columns the page never reads
    scores["flag_blur"], scores["reason_blur"] = False, "sharp enough"
    scores.to_parquet(path, index=False)
    read: list = []
    real = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda p, *a, **kw: read.append((Path(p).name, kw.get("columns")))
                        or real(p, *a, **kw))
    at = _page(folder)
    wanted = ["sample_id", "label", "score", "suggested_label", "score_knn"]  # not path, flags, reasons
    assert [r for r in read if r[0] == "scores.parquet"] == [("scores.parquet", wanted)]  # read once
    table = review_data.review_scores(Project.open(folder))
    assert table["label"].dtype == "category" and table["suggested_label"].dtype == "category"
    assert table["sample_id"].tolist() == scores["sample_id"].tolist()  # most suspect first, as written
    data = _grid(at)
    assert data["panel"]["suggested"] == scores.set_index("sample_id").loc[data["panel"]["id"], "suggested_label"]


def test_confusion_counts_of_categorical_labels_equal_those_of_strings():
    from mlfix.ui import confusion

    given, predicted = ["a", "a", "b", None, "c"], ["a", "b", "b", "a", None]
    frame = pd.DataFrame({"sample_id": list("vwxyz"), "given": given, "predicted": predicted,
                          "order": [0.1, 0.9, 0.5, 0.2, 0.3]})
    as_categories = frame.astype({"given": "category", "predicted": "category"})
    assert confusion.counts(as_categories).equals(confusion.counts(frame))
    assert confusion.cell_ids(as_categories, "a", "b") == confusion.cell_ids(frame, "a", "b") == ["w"]
    objects = confusion._objects(as_categories["given"])
    assert objects[0] is objects[1] and objects[3] is None  # references to the names, not a str a row
