"""Published views: atomic JSON files, validated names and sample ids."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from mlfix.review import views


@pytest.fixture
def project_dir(tmp_path):
    ids = ["cat/1.png", "cat/2.png", "dog/1.png", "dog/2.png", "bird/1.png", "bird/2.png", "x/1.png"]
    pd.DataFrame({"sample_id": ids, "label": [i.split("/")[0] for i in ids]}).to_parquet(
        tmp_path / "samples.parquet")
    return tmp_path


def test_publish_then_list_returns_the_view_in_order(project_dir):
    path = views.publish_view(project_dir, "suspects", ["dog/2.png", "cat/1.png", "dog/2.png"], note="top 2")
    assert path.parent == project_dir / "views" and path.suffix == ".json"
    listed = views.list_views(project_dir)
    assert list(listed) == ["suspects"]
    assert listed["suspects"]["sample_ids"] == ["dog/2.png", "cat/1.png"]  # order kept, duplicate dropped
    assert listed["suspects"]["note"] == "top 2"
    assert listed["suspects"]["created"] > 0
    assert not list((project_dir / "views").glob(".*tmp"))  # no temporary file left behind


def test_publishing_the_same_name_replaces_the_view(project_dir):
    views.publish_view(project_dir, "round 1", ["cat/1.png"])
    views.publish_view(project_dir, "round 1", ["dog/1.png"], note="again")
    listed = views.list_views(project_dir)
    assert listed == {"round 1": {**listed["round 1"], "sample_ids": ["dog/1.png"], "note": "again"}}
    assert len(list((project_dir / "views").glob("*.json"))) == 1


def test_unknown_sample_ids_are_refused_and_a_few_are_named(project_dir):
    unknown = [f"ghost/{i}.png" for i in range(8)]
    with pytest.raises(ValueError, match=r"8 sample_id\(s\) are not in this project: 'ghost/0.png'.*and 3 more"):
        views.publish_view(project_dir, "bad", ["cat/1.png", *unknown])
    assert views.list_views(project_dir) == {}


@pytest.mark.parametrize("name, message", [("", "empty"), ("   ", "empty"), ("a" * 121, "at most 120"),
                                           ("tab\there", "printable"), (7, "string")])
def test_bad_names_are_refused(project_dir, name, message):
    with pytest.raises(ValueError, match=message):
        views.publish_view(project_dir, name, ["cat/1.png"])


def test_no_samples_and_a_plain_string_are_refused(project_dir):
    with pytest.raises(ValueError, match="at least one"):
        views.publish_view(project_dir, "empty", [])
    with pytest.raises(ValueError, match="not one string"):
        views.publish_view(project_dir, "str", "cat/1.png")


def test_a_folder_without_samples_is_not_a_project(tmp_path):
    with pytest.raises(ValueError, match="not an mlfix project"):
        views.publish_view(tmp_path, "v", ["a"])
    # the caller may pass the ids it already has instead
    views.publish_view(tmp_path, "v", ["a"], known_ids=["a", "b"])
    assert views.list_views(tmp_path)["v"]["sample_ids"] == ["a"]


def test_damaged_files_are_skipped_and_delete_works(project_dir):
    views.publish_view(project_dir, "good", ["cat/1.png"])
    (project_dir / "views" / "broken.json").write_text("{not json")
    (project_dir / "views" / "foreign.json").write_text(json.dumps({"hello": 1}))
    assert list(views.list_views(project_dir)) == ["good"]
    assert views.delete_view(project_dir, "good") is True
    assert views.delete_view(project_dir, "good") is False
    assert views.list_views(project_dir) == {}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and s.isprintable()),
                min_size=1, max_size=6, unique_by=lambda s: s.strip()))
def test_any_printable_names_round_trip_to_distinct_files(tmp_path_factory, names):
    folder = tmp_path_factory.mktemp("views")
    files = {views.publish_view(folder, name, ["a"], known_ids=["a"]) for name in names}
    assert len(files) == len(names)  # names never collide on disk
    assert all(f.name.endswith(".json") and "/" not in f.name for f in files)
    assert set(views.list_views(folder)) == {name.strip() for name in names}
