"""Labelling from scratch on the Review page (AppTest): label mode, the Classes menu (add, rename,
merge), the grid's palette as the class list, and the exports of labels made from nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from mlfix.project import Project
from mlfix.review import actions
from mlfix.service import auth
from mlfix.ui import access
from tests.ui.test_review_page import grid_data, run_page, selectbox


@pytest.fixture
def project(unlabeled_project, tmp_path) -> Project:
    """A private copy of the indexed unlabeled project (16 images, no labels, its own store)."""
    skip = shutil.ignore_patterns("thumbs", "reviews.db*", "jobs", "progress")
    return Project.open(shutil.copytree(unlabeled_project.dir, tmp_path / "unlabeled", ignore=skip))


@pytest.fixture
def partly_labelled(tmp_path) -> Project:
    """12 images, 4 of them labelled (``red``, ``blue``), indexed with fast settings."""
    from tests.conftest import FAST_SETTINGS, write_flat_folder

    images = write_flat_folder(tmp_path / "images", n=12)
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(
        f"{i:03d}.png,{label}\n" for i, label in enumerate(["red", "blue", "red", "blue"] + [""] * 8)))
    return Project.create(tmp_path / "p", images=images, labels=tmp_path / "labels.csv", **FAST_SETTINGS).index()


def add_classes(at, names: str):
    at.text_input(key="mlfix_classes_new").input(names)
    next(b for b in at.button if b.label == "Add").click()
    return at.run()


def palette(at) -> list[tuple[str, str]]:
    return [(p["label"], p["key"]) for p in grid_data(at)["palette"]]


def test_a_project_without_labels_opens_in_label_mode_and_asks_for_classes(project):
    at = run_page(project.dir)
    assert selectbox(at, "Class").value == "(all images)"
    data = grid_data(at)
    assert [item["id"] for item in data["items"]] == list(project.order(None))  # all images, similarity order
    assert data["palette"] == [] and all(item["label"] is None for item in data["items"])
    assert any(i.value.startswith("No classes yet: add the first ones under **Classes**") for i in at.info)
    assert any("no labels: label-error scores need at least two classes" in c.value.replace("\\", "")
               for c in at.caption)  # and so no suggestions either


def test_an_admin_adds_classes_and_they_become_the_palette_and_number_keys(project):
    at = add_classes(run_page(project.dir), "cat, dog,  cat")
    assert not at.exception
    assert palette(at) == [("cat", "1"), ("dog", "2")]
    assert any(s.value == "Added cat, dog." for s in at.success)
    assert not any(i.value.startswith("No classes yet") for i in at.info)
    events = project.classes.events
    assert events[["kind", "name", "reviewer"]].values.tolist() == [["add", "cat", "tester"], ["add", "dog", "tester"]]
    at = add_classes(at, "dog")
    assert any("'dog' is already a class" in e.value for e in at.error) and len(project.classes.events) == 2


def test_a_key_press_on_a_new_class_is_stored_and_a_rename_relabels_it(project):
    project.classes.add("kat", reviewer="ann")
    ids = list(project.order(None))[:3]
    at = run_page(project.dir)
    classes = [p["label"] for p in grid_data(at)["palette"]]
    payload = {"session": "s", "actions": [{"seq": 1, "client_id": "c1", "kind": "relabel", "ids": ids, "label": "kat"}]}
    result = actions.BatchApplier().apply(payload, project.reviews, classes, "tester")  # what the page does
    assert not result.errors and len(result.records) == 3
    at.selectbox(key="mlfix_classes_rename_from").set_value("kat")
    at.text_input(key="mlfix_classes_rename_to").input("cat")
    next(b for b in at.button if b.label == "Rename").click()
    at.run()
    assert palette(at) == [("cat", "1")]
    items = {i["id"]: i for i in grid_data(at)["items"]}
    assert [(items[s]["status"], items[s]["new_label"]) for s in ids] == [("relabeled", "cat")] * 3
    table = project.corrected_labels().set_index("sample_id")
    assert table.loc[ids, "corrected_label"].tolist() == ["cat"] * 3 and table.loc[ids, "changed"].all()
    assert table.loc[ids, "original_label"].isna().all()
    assert project.decisions()["label"].tolist() == ["kat"] * 3  # history as written


def test_merging_classes_in_the_menu(project):
    for name in ("cat", "kitty"):
        project.classes.add(name, reviewer="ann")
    [sample] = list(project.order(None))[:1]
    project.reviews.decide(sample, "relabel", "kitty", reviewer="ann")
    at = run_page(project.dir)
    at.selectbox(key="mlfix_classes_merge_from").set_value("kitty")
    at.selectbox(key="mlfix_classes_merge_into").set_value("cat")
    next(b for b in at.button if b.label == "Merge").click()
    at.run()
    assert palette(at) == [("cat", "1")] and project.classes.names == ["cat"]
    assert project.corrected_labels().set_index("sample_id").loc[sample, "corrected_label"] == "cat"


def test_a_reviewer_sees_the_classes_but_cannot_change_them(project, monkeypatch):
    monkeypatch.setenv("MLFIX_ADMIN_TOKEN", "admin-token-0123456789")
    monkeypatch.setenv("MLFIX_REVIEWER_TOKEN", "reviewer-token-0123456789")
    monkeypatch.delenv("MLFIX_DB_URL", raising=False)
    at = run_page(project.dir, **{access.IDENTITY_KEY: auth.Identity("bob", "reviewer", "token")})
    assert not [t for t in at.text_input if t.key == "mlfix_classes_new"]
    assert any(i.value.startswith("No classes yet: ask an admin") for i in at.info)
    assert any(c.value == "Only an admin adds, renames or merges classes." for c in at.caption)


def test_a_partly_labelled_project_opens_on_all_images_with_a_label_mode_line(partly_labelled):
    at = run_page(partly_labelled.dir)
    assert selectbox(at, "Class").options == ["(all images)", "blue", "red"]
    assert selectbox(at, "Class").value == "(all images)"
    assert palette(at) == [("blue", "1"), ("red", "2")]
    assert any(c.value.startswith("Label mode: 8 of 12 images came without a label.") for c in at.caption)
    labels = {i["id"]: i["label"] for i in grid_data(at)["items"]}
    assert sorted(v for v in labels.values() if v) == ["blue", "blue", "red", "red"]


def test_labels_made_from_scratch_export_as_csv_json_and_coco(project):
    from mlfix.review.classes import export_info
    from mlfix.review.export import export_bytes

    project.classes.add("cat", reviewer="ann")
    project.classes.add("dog", reviewer="ann")
    ids = list(project.samples["sample_id"])
    project.reviews.decide(ids[:2], "relabel", "dog", reviewer="ann")
    table = project.corrected_labels()
    assert table["corrected_label"].fillna("-").tolist()[:3] == ["dog", "dog", "-"]
    info = export_info(project.reviews, project.labels)
    doc = json.loads(export_bytes(table, "json", project.source, project=info))
    assert doc["project"]["classes"] == ["cat", "dog"] and len(doc["project"]["class_events"]) == 2
    assert [s["corrected_label"] for s in doc["samples"][:3]] == ["dog", "dog", None]
    csv = export_bytes(table, "csv").decode().splitlines()
    assert csv[1].split(",")[3] == "dog" and csv[3].split(",")[3] == ""
    coco = json.loads(export_bytes(table, "coco", project.source, project=info, samples=project.samples))
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"] and len(coco["images"]) == 16
    assert [(a["image_id"], a["category_id"]) for a in coco["annotations"]] == [(1, 2), (2, 2)]


@pytest.mark.browser
@pytest.mark.slow
def test_in_chromium_an_admin_adds_classes_and_key_1_labels_the_focused_image(project, tmp_path):
    from tests.ui.test_browser_review import poll, review_page, serving

    with serving(project.dir, tmp_path) as url, review_page(url, height=900) as page:
        page.get_by_role("button", name="Classes").click()
        page.get_by_placeholder("cat, dog, bird").fill("cat, dog")
        page.get_by_role("button", name="Add").click()
        page.get_by_text("Added cat, dog.").wait_for(timeout=20_000)
        page.keyboard.press("Escape")
        page.locator('[data-label="cat"]').wait_for(timeout=20_000)  # the grid's palette has the new class
        page.locator(".tile").first.click()
        page.keyboard.press("1")
        assert poll(lambda: len(project.decisions()) > 0)
        assert project.decisions()[["sample_id", "kind", "label", "reviewer"]].values.tolist() == [
            [project.order(None)[0], "relabel", "cat", "browser-test"]]
        page.reload()  # the label survives a reload: the first tile carries the new label
        page.locator(".tile").first.wait_for(timeout=60_000)
        assert poll(lambda: "cat" in page.locator(".tile").first.inner_text())


def test_while_most_images_are_unlabelled_scores_are_offered_not_urged_and_no_confusion_shows(project):
    from mlfix.ui import scores_job

    project.classes.add("cat", reviewer="ann")
    project.classes.add("dog", reviewer="ann")
    ids = list(project.order(None))
    payload = {"session": "s", "actions": [
        {"seq": 1, "client_id": "c1", "kind": "relabel", "ids": ids[:2], "label": "cat"},
        {"seq": 2, "client_id": "c2", "kind": "relabel", "ids": ids[2:4], "label": "dog"}]}
    assert not actions.BatchApplier().apply(payload, project.reviews, ["cat", "dog"], "ann").errors
    at = run_page(project.dir)
    [button] = [b for b in at.button if b.label == "Compute scores"]  # two classes now: scores can run
    assert button.proto.type == "secondary"
    assert any(c.value == scores_job.MOSTLY_UNLABELED for c in at.caption)
    assert not any(e.label.startswith("Confusion") for e in at.expander)
