"""The Review page shows suggested labels (labelling from scratch) and warns when the labels look wrong."""

from __future__ import annotations

from pathlib import Path

from tests.ui.test_clusters_page import private_copy, run_page as run
from tests.ui.test_review_page import grid_data

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "review.py")


def run_page(project_dir, at=None):
    return run(project_dir, at, page=PAGE)


def test_suggestions_reach_the_grid_after_a_few_labels(unlabeled_project, tmp_path):
    project = private_copy(unlabeled_project, tmp_path)
    ids = project.samples["sample_id"].tolist()
    at = run_page(project.dir)
    button = at.button(key="mlfix_review_suggest")
    button.click()
    at = run_page(project.dir, at)  # no labels yet: nothing suggested, and why
    assert any("no labels yet: suggestions need labels of at least two classes" in c.value.replace("\\", "")
               for c in at.caption)
    named = {ids[0]: "red", ids[1]: "green"}
    for sample_id, label in named.items():
        project.reviews.decide([sample_id], "relabel", label, reviewer="ann", labels=["red", "green"])
    at.button(key="mlfix_review_suggest").click()
    at = run_page(project.dir, at)
    table = project.suggest()
    assert len(table) == len(ids) - 2
    assert any(f"{len(table)} suggestions from given and reviewed labels" in c.value.replace("\\", "")
               for c in at.caption)
    data = grid_data(at)
    assert data["show_suggested"] is True
    by_id = table.set_index("sample_id")
    for item in data["items"]:
        if item["id"] in named:
            continue
        assert item["suggested"] == by_id.loc[item["id"], "suggested_label"]
        assert item["confidence"] == round(float(by_id.loc[item["id"], "confidence"]), 2)


def test_untrusted_labels_get_a_warning(demo_project, tmp_path):
    from mlfix.scoring.trust import TRUST_FILE, write_trust

    project = private_copy(demo_project, tmp_path)
    at = run_page(project.dir)
    assert not any("not to be trusted" in w.value for w in at.warning)
    write_trust(project.dir / TRUST_FILE, {"verdict": "untrusted", "accuracy": 0.12, "chance": 0.1,
                                           "message": "Label-based scores are not to be trusted: see why."})
    at = run_page(project.dir)
    assert any("Label-based scores are not to be trusted" in w.value.replace("\\", "") for w in at.warning)


def test_in_label_mode_the_scores_suggestions_show_in_the_similarity_order(unlabeled_project, tmp_path):
    """Once scores exist the Suggest button gives way to the scores' suggested labels: in label mode
    the grid must still show them on the tiles (Enter takes them; unseen, it would take them blind)."""
    project = private_copy(unlabeled_project, tmp_path)
    ids = project.samples["sample_id"].tolist()
    for i, sample_id in enumerate(ids[:8]):
        project.reviews.decide([sample_id], "relabel", ["red", "green"][i % 2], reviewer="ann",
                               labels=["red", "green"])
    scores = project.scores()
    assert scores["suggested_label"].notna().all()
    data = grid_data(run_page(project.dir))
    assert data["show_suggested"] is True
    assert {item["id"] for item in data["items"] if item["suggested"]} == set(ids)

    # the Suggest button stays in label mode: its suggestions follow what reviewers label next
    at = run_page(project.dir)
    assert at.button(key="mlfix_review_suggest")
    at.button(key="mlfix_review_suggest").click()
    at = run_page(project.dir, at)
    assert any("suggestions from given and reviewed labels" in c.value.replace("\\", "") for c in at.caption)
    table = project.suggest().set_index("sample_id")
    from_scores = scores.set_index("sample_id")["suggested_label"]
    items = grid_data(at)["items"]
    for item in items:  # the button's suggestions first, the scores' where it made none (labelled images)
        source = table["suggested_label"] if item["id"] in table.index else from_scores
        assert item["suggested"] == source[item["id"]]
    assert {item["id"] for item in items if item["suggested"]} == set(ids)
