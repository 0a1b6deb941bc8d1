"""The Review page through AppTest: what the grid is given, paging, views, scores, bad input.

The grid itself is a custom component (an ``UnknownElement`` in AppTest): these tests read the data
the page sends it; the browser side is tested in tests/ui/test_browser_review.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "review.py")
GRID_KEY = "mlfix_review_grid"


@pytest.fixture
def project(demo_project, tmp_path):
    """A private copy of the indexed demo project (its own decisions store)."""
    from mlfix.project import Project

    skip = shutil.ignore_patterns("images", "thumbs", "reviews.db*", "cells.npy", "progress")
    shutil.copytree(demo_project.dir, tmp_path / "project", ignore=skip)
    return Project.open(tmp_path / "project")


def run_page(project_dir, **state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["mlfix_project_dir"] = str(project_dir)
    at.session_state["mlfix_reviewer"] = "tester"
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def grid_data(at: AppTest) -> dict:
    [element] = at.get("bidi_component")
    return json.loads(element.proto.json)


def selectbox(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


def test_the_grid_shows_one_class_in_similarity_order(project):
    at = run_page(project.dir)
    data = grid_data(at)
    label = selectbox(at, "Class").value
    assert label == project.labels[0]
    expected = [str(s) for s in project.order(label)][:200]
    assert [item["id"] for item in data["items"]] == expected
    assert {item["status"] for item in data["items"]} == {"unreviewed"}
    assert data["counter"] == {"reviewed": 0, "total": len(expected), "title": f"Class: {label}"}
    assert [p["label"] for p in data["palette"]] == project.labels
    assert [p["key"] for p in data["palette"]][:3] == ["1", "2", "3"]
    # thumbnails travel by URL (static serving) or, without it, as data URLs; never missing
    assert all(item["url"].startswith(("app/static/", "data:image/jpeg")) for item in data["items"])
    assert len(list((project.dir / "thumbs").rglob("*_128.jpg"))) >= len(expected)  # cached on disk
    # the side panel: the first image, larger, with its nearest neighbours
    panel = data["panel"]
    assert panel["id"] == expected[0]
    assert [n["id"] for n in panel["neighbours"]] == project.neighbours(expected[0], k=8)


def test_decisions_in_the_store_show_as_badges_and_count(project):
    from mlfix.review.store import ReviewStore

    at = run_page(project.dir)
    ids = [item["id"] for item in grid_data(at)["items"]][:3]
    other = next(label for label in project.labels if label != selectbox(at, "Class").value)
    with ReviewStore.for_project(project.dir) as store:  # e.g. a second tab, or a notebook
        store.decide([ids[0]], "relabel", other, reviewer="ann")
        store.decide([ids[1]], "flag", reviewer="ann")
        store.decide([ids[2]], "ok", reviewer="ann")
    at.run()
    items = {item["id"]: item for item in grid_data(at)["items"]}
    assert (items[ids[0]]["status"], items[ids[0]]["new_label"]) == ("relabeled", other)
    assert items[ids[1]]["status"] == "flagged" and items[ids[2]]["status"] == "ok"
    assert grid_data(at)["counter"]["reviewed"] == 3


def test_paging_with_the_buttons(project):
    at = run_page(project.dir)
    selectbox(at, "Class").set_value("(all images)")
    selectbox(at, "Per page").set_value(100)
    at.run()
    first = grid_data(at)
    assert first["page"] == {"index": 0, "count": 2} and len(first["items"]) == 100
    assert first["show_labels"] is True
    next_button = next(b for b in at.button if b.label == "Next")
    next_button.click()
    at.run()
    second = grid_data(at)
    assert second["page"]["index"] == 1 and second["view"] != first["view"]
    assert [i["id"] for i in second["items"]] == [str(s) for s in project.order(None)[100:200]]
    # changing the class starts again at the first page
    selectbox(at, "Class").set_value(project.labels[1])
    at.run()
    assert grid_data(at)["page"]["index"] == 0


def test_the_combined_order_is_the_default_and_the_others_one_click_away(project):
    at = run_page(project.dir)
    sort = selectbox(at, "Sort by")
    assert sort.value == "Similarity (embedding + words)"
    assert sort.options[:3] == ["Similarity (embedding + words)", "Similarity (embedding)",
                                "Similarity (visual words)"]
    label = selectbox(at, "Class").value
    by_combined = [str(s) for s in project.order(label, by="combined")][:200]
    assert [item["id"] for item in grid_data(at)["items"]] == by_combined
    assert grid_data(at)["show_suggested"] is False
    sort.set_value("Similarity (embedding)")
    at.run()
    by_embedding = [str(s) for s in project.order(label, by="embedding")][:200]
    assert [item["id"] for item in grid_data(at)["items"]] == by_embedding
    selectbox(at, "Sort by").set_value("Similarity (visual words)")
    at.run()
    assert not at.exception, at.exception
    assert [item["id"] for item in grid_data(at)["items"]] == [str(s) for s in project.order(label, by="words")][:200]
    assert grid_data(at)["show_suggested"] is False
    assert not [c.value for c in at.caption if "embedding order" in c.value]
    # over all images the two orders differ (they are two ways to see the data)
    assert list(project.order(None, by="embedding")) != list(project.order(None, by="words"))


def test_without_the_combined_order_the_embedding_order_is_the_default_and_not_offered(project):
    shutil.rmtree(project.dir / "orders" / "by-combined")  # as above 100k images
    at = run_page(project.dir)
    sort = selectbox(at, "Sort by")
    assert sort.value == "Similarity (embedding)" and "Similarity (embedding + words)" not in sort.options
    label = selectbox(at, "Class").value
    assert [item["id"] for item in grid_data(at)["items"]] == [str(s) for s in project.order(label, by="embedding")][:200]
    assert project.orderings() == ["embedding", "words"]


def test_a_project_indexed_before_the_embedding_order_shows_the_words_order_with_a_note(project):
    shutil.rmtree(project.dir / "orders" / "by-combined")
    shutil.rmtree(project.dir / "orders" / "by-embedding")
    at = run_page(project.dir)
    label = selectbox(at, "Class").value
    assert [item["id"] for item in grid_data(at)["items"]] == [str(s) for s in project.order(label, by="words")][:200]
    assert any("Index it again" in c.value for c in at.caption)


def test_a_published_view_appears_in_the_view_picker(project):
    from mlfix.review.views import publish_view

    ids = [str(s) for s in project.samples["sample_id"].iloc[[5, 50, 150]]]
    publish_view(project.dir, "suspects", ids, note="three to check")
    at = run_page(project.dir)
    picker = selectbox(at, "Images")
    assert "suspects" in picker.options
    picker.set_value("suspects")
    at.run()
    data = grid_data(at)
    assert [item["id"] for item in data["items"]] == ids
    assert data["counter"]["title"] == "View: suspects" and data["show_labels"] is True
    assert any("three to check" in c.value for c in at.caption)


def test_sort_by_a_score_column_puts_the_most_suspicious_first(project):
    samples = project.samples
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"sample_id": samples["sample_id"], "label": samples["label"],
                           "score": rng.random(len(samples)), "suggested_label": samples["label"]})
    scores["score_knn"] = scores["score"]
    scores.to_parquet(project.dir / "scores.parquet")
    at = run_page(project.dir)
    sort = selectbox(at, "Sort by")
    assert {"score", "score_knn"} <= set(sort.options)
    sort.set_value("score_knn")
    at.run()
    label = selectbox(at, "Class").value
    got = [item["id"] for item in grid_data(at)["items"]]
    mine = scores[scores["label"] == label].sort_values("score_knn", ascending=False)
    assert got == mine["sample_id"].tolist()[:200]
    assert grid_data(at)["show_suggested"] is True  # tiles hint at the suggested label
    assert all(item["suggested"] == label for item in grid_data(at)["items"])


def test_a_folder_that_is_not_a_project_is_a_message_not_a_traceback(tmp_path):
    at = run_page(tmp_path)
    assert not at.get("bidi_component")
    assert any("not an mlfix project" in e.value for e in at.error)


def test_an_unindexed_project_is_shown_in_file_order(tiny_image_folder, tmp_path):
    from mlfix.project import Project

    project = Project.create(tmp_path / "plain", images=tiny_image_folder)
    at = run_page(project.dir)
    data = grid_data(at)
    label = selectbox(at, "Class").value
    expected = project.samples.loc[project.samples["label"] == label, "sample_id"].tolist()
    assert [item["id"] for item in data["items"]] == expected
    assert "neighbours" not in data["panel"]
    assert any("not indexed yet" in c.value for c in at.caption)


def test_the_review_page_does_not_import_torch(project):
    # In a fresh process: other tests in this one may have imported torch already.
    code = f"""
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({PAGE!r}, default_timeout=120)
at.session_state["mlfix_project_dir"] = {str(project.dir)!r}
at.run()
assert not at.exception, at.exception
assert at.get("bidi_component"), "the grid was not rendered"
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_without_scores_compute_scores_runs_a_background_job_and_the_page_picks_them_up(project):
    from mlfix.service import jobs

    (project.dir / "scores.parquet").unlink()
    at = run_page(project.dir)
    assert not [o for o in selectbox(at, "Sort by").options if o.startswith("score")]
    assert any("No scores yet" in c.value for c in at.caption)
    [button] = [b for b in at.button if b.label == "Compute scores"]
    button.click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert jobs.current_job(project.dir)["kind"] == "scores"  # started outside the script run
    assert jobs.wait_job(project.dir, timeout=240).state == "finished"
    at.run()
    assert {"score", "score_knn"} <= set(selectbox(at, "Sort by").options)
    assert not [b for b in at.button if b.label == "Compute scores"]
    assert grid_data(at)["items"]


def test_a_running_scores_job_shows_its_progress_and_a_failed_one_its_reason(project):
    from mlfix.service import jobs

    (project.dir / "scores.parquet").unlink()
    jobs.start_job(project.dir, "scores", command=[sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        at = run_page(project.dir)
        assert any("Computing the scores: running since" in i.value for i in at.info)
        assert not [b for b in at.button if b.label == "Compute scores"]
    finally:
        jobs.stop_job(project.dir, force=True)
    jobs.start_job(project.dir, "scores", command=[
        sys.executable, "-c", "import sys; print('mlfix scores: the probe ran out of memory'); sys.exit(2)"])
    jobs.wait_job(project.dir, timeout=60)
    at = run_page(project.dir)
    assert any("the probe ran out of memory" in e.value for e in at.error)
    assert [b for b in at.button if b.label == "Compute scores"]  # try again


def test_an_unlabeled_folder_shows_no_labels_and_offers_the_similarity_order(unlabeled_project, tmp_path):
    from mlfix.project import Project

    skip = shutil.ignore_patterns("thumbs", "reviews.db*", "jobs", "progress")
    project = Project.open(shutil.copytree(unlabeled_project.dir, tmp_path / "unlabeled", ignore=skip))
    at = run_page(project.dir)
    assert selectbox(at, "Class").options == ["(all images)"]
    data = grid_data(at)
    assert len(data["items"]) == 16 and all(item["label"] is None for item in data["items"])
    assert data["show_labels"] is True  # the grid shows nothing (not "null") for a missing label
    assert any(c.value.startswith("Similarity order only: no labels: label-error scores need at least two")
               for c in at.caption)
    assert not [b for b in at.button if b.label == "Compute scores"]
    assert not any("Compute scores" in c.value for c in at.caption)  # the confusion hint does not offer it
