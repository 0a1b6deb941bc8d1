"""``mlfix export``: the corrected labels as CSV, JSON or COCO, the same files as the Export page."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mlfix.cli import main
from mlfix.project import Project
from mlfix.review.export import coco_unavailable


@pytest.fixture
def folder_project(tiny_image_folder, tmp_path):
    project = Project.create(tmp_path / "p", images=tiny_image_folder)
    ids = project.samples["sample_id"].tolist()
    project.reviews.decide(ids[:2], "relabel", "green", reviewer="alice")
    project.reviews.decide(ids[2], "flag", reviewer="bob")
    return project


@pytest.fixture
def coco_project(tmp_path):
    """Three boxes of category ``cat`` on one scene; the second relabeled ``gadget``."""
    from tests.data.test_scan_boxes import coco_scene

    folder, coco = coco_scene(tmp_path, [[0, 0, 20, 20], [20, 20, 20, 20], [40, 40, 20, 20]])
    project = Project.create(tmp_path / "coco-project", images=folder, coco=coco)
    from mlfix.review.store import ReviewStore

    with ReviewStore.for_project(project.dir) as store:  # a new class: the store of the project allows its labels only
        store.decide(project.samples["sample_id"].iloc[1], "relabel", "gadget", reviewer="alice")
    return project


def test_csv_and_json_hold_every_sample_with_its_corrected_label(folder_project, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    assert main(["export", "--project", str(folder_project.dir), "--format", "csv", "-o", str(out)]) == 0
    assert "40 samples (2 relabeled, 1 flagged, 3 reviewed) -> " in capsys.readouterr().out
    table = pd.read_csv(out, keep_default_na=False).set_index("sample_id")
    ids = folder_project.samples["sample_id"].tolist()
    assert len(table) == 40 and table.loc[ids[:2], "corrected_label"].tolist() == ["green", "green"]
    assert table.loc[ids[2], "status"] == "flagged"
    doc_path = tmp_path / "labels.json"  # the format from the suffix
    assert main(["export", "--project", str(folder_project.dir), "-o", str(doc_path)]) == 0
    doc = json.loads(doc_path.read_text())
    assert doc["project"]["dir"] == str(folder_project.dir) and doc["project"]["last_decision_id"] == 3
    assert len(doc["samples"]) == 40


def test_coco_export_writes_the_corrected_category_into_the_source_file(coco_project, tmp_path):
    out = tmp_path / "fixed.json"
    assert main(["export", "--project", str(coco_project.dir), "--format", "coco", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    gadget = doc["categories"][-1]
    assert gadget["name"] == "gadget"
    assert [a["category_id"] for a in doc["annotations"]] == [1, gadget["id"], 1]


def test_coco_for_a_project_without_boxes_is_a_new_file_of_image_level_labels(folder_project, tmp_path):
    out = tmp_path / "labels.json"
    assert main(["export", "--project", str(folder_project.dir), "--format", "coco", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    samples = folder_project.samples
    assert [i["file_name"] for i in doc["images"]] == samples["path"].tolist()
    assert [(i["width"], i["height"]) for i in doc["images"][:1]] == [(int(samples["width"][0]), int(samples["height"][0]))]
    names = {c["id"]: c["name"] for c in doc["categories"]}
    assert [c["name"] for c in doc["categories"]] == folder_project.classes.names  # the class list
    assert len(doc["annotations"]) == 40 and not any("bbox" in a for a in doc["annotations"])  # no invented boxes
    assert [names[a["category_id"]] for a in doc["annotations"][:2]] == ["green", "green"]


def test_coco_export_with_its_source_file_gone_says_so(coco_project, tmp_path, capsys):
    (tmp_path / "coco.json").unlink()
    assert main(["export", "--project", str(coco_project.dir), "--format", "coco", "-o",
                 str(tmp_path / "x.json")]) == 2
    assert "is gone" in capsys.readouterr().err


def test_export_to_standard_output(folder_project, capsysbinary):
    assert main(["export", "--project", str(folder_project.dir), "--format", "csv", "-o", "-"]) == 0
    assert capsysbinary.readouterr().out.startswith(b"sample_id,path,original_label,corrected_label")


def test_the_export_page_offers_coco_exactly_when_the_cli_does(folder_project, coco_project):
    from tests.ui.test_app_pages import app_on

    for project, offered in ((folder_project, True), (coco_project, True)):  # whole images: image-level COCO
        assert (coco_unavailable(project.source) is None) is offered
        at = app_on(project.dir, "app_pages/export.py")
        labels = [b.proto.label for b in at.get("download_button")]
        assert ("COCO" in labels) is offered
