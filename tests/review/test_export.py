"""Corrected labels out: the export table, CSV/JSON/COCO bytes, change summaries."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from mlfix.review import export
from mlfix.review.store import ReviewStore


def values(column: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in column]


@pytest.fixture
def samples():
    return pd.DataFrame({"sample_id": ["a.png", "b.png", "c.png", "d.png", "e.png"],
                         "path": ["a.png", "b.png", "c.png", "d.png", "e.png"],
                         "label": ["cat", "cat", "dog", "dog", None]})


@pytest.fixture
def state(tmp_path, samples):
    with ReviewStore.for_project(tmp_path) as store:
        store.decide(["a.png"], "relabel", "dog", reviewer="alice")
        store.decide(["c.png"], "flag", reviewer="bob")
        store.decide(["d.png"], "ok", reviewer="bob")
        store.decide(["e.png"], "relabel", "bird", reviewer="alice")
        store.decide(["b.png"], "relabel", "dog", reviewer="alice")
        store.undo("b.png", reviewer="alice")
        return store.current_state(samples)


def test_the_export_table_follows_the_decision_log(samples, state):
    table = export.export_table(samples, state)
    assert list(table.columns) == export.EXPORT_COLUMNS
    assert table["sample_id"].tolist() == samples["sample_id"].tolist()
    assert table["corrected_label"].tolist() == ["dog", "cat", "dog", "dog", "bird"]
    assert table["changed"].tolist() == [True, False, False, False, True]
    assert table["status"].tolist() == ["relabeled", "unreviewed", "flagged", "ok", "relabeled"]
    assert values(table["reviewer"]) == ["alice", None, "bob", "bob", "alice"]


def test_nothing_reviewed_means_nothing_changed(samples):
    table = export.export_table(samples, None)
    assert not table["changed"].any()
    assert values(table["corrected_label"]) == ["cat", "cat", "dog", "dog", None]
    assert export.changes(table).empty


def test_csv_and_json_round_trip(samples, state):
    table = export.export_table(samples, state)
    back = pd.read_csv(io.BytesIO(export.to_csv(table)), keep_default_na=False)
    assert back["corrected_label"].tolist() == ["dog", "cat", "dog", "dog", "bird"]
    assert back["changed"].tolist() == [True, False, False, False, True]
    assert back.loc[0, "decided_at"].endswith("+00:00")  # ISO 8601 with the time zone
    doc = json.loads(export.to_json(table, project={"name": "p"}))
    assert doc["project"] == {"name": "p"}
    assert doc["samples"][0] == {**doc["samples"][0], "sample_id": "a.png", "original_label": "cat",
                                 "corrected_label": "dog", "changed": True, "status": "relabeled"}
    assert doc["samples"][4]["original_label"] is None and doc["samples"][1]["decided_at"] is None


def coco_source():
    return {"images": [{"id": 1, "file_name": "img/1.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}],
            "annotations": [{"id": 10, "image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 1},
                            {"id": 11, "image_id": 1, "bbox": [5, 5, 10, 10], "category_id": 1},
                            {"id": 12, "image_id": 1, "bbox": [9, 9, 10, 10], "category_id": 7},
                            {"id": 13, "image_id": 1, "bbox": [0, 0, 0, 0], "category_id": 7}]}


def test_coco_export_rewrites_category_ids_and_adds_new_categories(tmp_path):
    samples = pd.DataFrame({"sample_id": ["img/1.jpg#10", "img/1.jpg#11", "img/1.jpg#12"],
                            "path": ["img/1.jpg"] * 3, "label": ["cat", "cat", "dog"]})
    with ReviewStore.for_project(tmp_path) as store:
        store.decide(["img/1.jpg#10"], "relabel", "dog", reviewer="alice")
        store.decide(["img/1.jpg#12"], "relabel", "fox", reviewer="alice")
        table = export.export_table(samples, store.current_state(samples))
    source = coco_source()
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(source))
    out = json.loads(export.to_coco(path, table))
    assert [a["category_id"] for a in out["annotations"]] == [7, 1, 8, 7]  # 13 was skipped: untouched
    assert out["categories"][-1] == {"id": 8, "name": "fox", "supercategory": ""}
    assert out["images"] == source["images"]
    assert source == coco_source()  # the input dict is not modified


def test_coco_export_refuses_a_non_coco_dict():
    with pytest.raises(ValueError, match="not a COCO dict"):
        export.to_coco({"images": []}, pd.DataFrame({"sample_id": [], "corrected_label": []}))


def test_changes_and_per_class_summaries(samples, state):
    table = export.export_table(samples, state)
    changes = export.changes(table)
    assert changes.to_dict(orient="records") == [
        {"original_label": "(no label)", "corrected_label": "bird", "count": 1},
        {"original_label": "cat", "corrected_label": "dog", "count": 1}]
    per_class = export.per_class(table).set_index("label")
    assert per_class.loc["cat"].to_dict() == {"before": 2, "after": 1, "moved_out": 1, "moved_in": 0,
                                              "flagged": 0, "ok": 0}
    assert per_class.loc["dog"].to_dict() == {"before": 2, "after": 3, "moved_out": 0, "moved_in": 1,
                                              "flagged": 1, "ok": 1}


def test_bad_inputs_are_refused(samples):
    with pytest.raises(ValueError, match="'label' column"):
        export.export_table(samples.drop(columns=["label"]))
    dup = pd.DataFrame({"sample_id": ["a.png", "a.png"], "label": ["x", "y"]})
    with pytest.raises(ValueError, match="duplicate"):
        export.export_table(samples, dup)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["cat", "dog", "owl"]), st.sampled_from(["cat", "dog", "owl", None])),
                min_size=1, max_size=30))
def test_counts_are_conserved(pairs):
    """Whatever the relabels, every sample is counted once before and once after."""
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(pairs))], "label": [p[0] for p in pairs]})
    state = pd.DataFrame({"sample_id": samples["sample_id"],
                          "label": [new or old for old, new in pairs],
                          "status": ["relabeled" if new else "unreviewed" for _, new in pairs]})
    table = export.export_table(samples, state)
    per_class = export.per_class(table)
    assert per_class["before"].sum() == per_class["after"].sum() == len(pairs)
    assert (per_class["before"] - per_class["moved_out"] + per_class["moved_in"] == per_class["after"]).all()
    assert export.changes(table)["count"].sum() == table["changed"].sum()
