"""Splits in the sample table: a CSV column, split folders, COCO file names, and old tables without them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, strategies as st

from mlfix.data.scan import SPLIT_FOLDER, is_split_folder, scan, with_split
from mlfix.project import Project
from mlfix.review.export import export_table, to_csv, to_json
from tests.conftest import shape_image


def write(root: Path, *names: str) -> Path:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shape_image((200, 40, 40), seed=i, size=32).save(root / name)
    return root


def splits(found) -> dict:
    table = found.samples.set_index("sample_id")
    return {sid: (None if pd.isna(row["label"]) else row["label"], None if pd.isna(row["split"]) else row["split"])
            for sid, row in table.iterrows()}


def test_a_csv_split_column_is_kept_stripped_and_empty_means_none(tmp_path):
    images = write(tmp_path / "img", "a.png", "b.png", "c.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label,Split\na.png,cat, train \nb.png,dog,\nc.png,dog,Test\n")
    found = scan(images, labels=csv)
    assert splits(found) == {"a.png": ("cat", "train"), "b.png": ("dog", None), "c.png": ("dog", "Test")}
    assert found.samples["split"].dtype == "string"
    assert found.problems.empty


def test_a_csv_split_with_control_characters_or_too_long_is_a_problem_row(tmp_path):
    images = write(tmp_path / "img", "a.png", "b.png", "c.png")
    csv = tmp_path / "labels.csv"
    csv.write_text(f'path,label,split\na.png,cat,"tr\x07ain"\nb.png,dog,{"x" * 101}\nc.png,dog,val\n')
    found = scan(images, labels=csv)
    assert splits(found) == {"c.png": ("dog", "val")}
    assert found.problems["path"].tolist() == ["a.png", "b.png"]
    assert all("is not a split name" in r for r in found.problems["reason"])


def test_a_csv_without_a_split_column_has_no_splits(tmp_path):
    images = write(tmp_path / "img", "a.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.png,cat\n")
    assert splits(scan(images, labels=csv)) == {"a.png": ("cat", None)}


def test_top_level_split_folders_give_the_split_and_the_class_below(tmp_path):
    images = write(tmp_path / "img", "train/cat/1.png", "train/dog/2.png", "VAL/cat/3.png", "test/4.png",
                   "validation/dog/deep/5.png")
    assert splits(scan(images)) == {
        "train/cat/1.png": ("cat", "train"), "train/dog/2.png": ("dog", "train"), "VAL/cat/3.png": ("cat", "VAL"),
        "test/4.png": (None, "test"), "validation/dog/deep/5.png": ("deep", "validation")}


@pytest.mark.parametrize("names", [
    ("train/cat/1.png", "dog/2.png"),      # one top folder is a class, not a split
    ("train/cat/1.png", "3.png"),          # an image at the top level
    ("test/1.png", "cat/2.png"),           # a class called "test" among others
], ids=["class-folder", "top-image", "class-named-test"])
def test_a_set_where_only_some_top_folders_are_split_names_is_a_plain_image_folder(tmp_path, names):
    found = scan(write(tmp_path / "img", *names))
    assert found.samples["split"].isna().all()
    assert dict(zip(found.samples["sample_id"], found.samples["label"].astype(object).where(
        found.samples["label"].notna(), None))) == {
        n: (Path(n).parent.name or None) for n in names}


def test_coco_file_names_under_a_split_folder_or_a_split_prefix_give_the_split(tmp_path):
    images = write(tmp_path / "img", "train2017/1.png", "val/2.png", "photos/3.png", "4.png")
    coco = {"images": [{"id": i, "file_name": n} for i, n in
                       enumerate(["train2017/1.png", "val/2.png", "photos/3.png", "4.png"])],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [2, 2, 20, 20]}
                            for i in range(4)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    found = scan(images, coco=tmp_path / "coco.json")
    assert splits(found) == {"train2017/1.png#10": ("cat", "train2017"), "val/2.png#11": ("cat", "val"),
                             "photos/3.png#12": ("cat", None), "4.png#13": ("cat", None)}


@given(st.sampled_from(["train", "val", "valid", "validation", "test", "dev"]),
       st.sampled_from(["", "2017", "_2", "-01"]), st.booleans())
def test_every_split_name_with_a_number_is_a_split_folder_in_any_case(name, suffix, upper):
    folder = (name + suffix).upper() if upper else name + suffix
    assert is_split_folder(folder)
    assert not is_split_folder(folder + "x") and not is_split_folder("my" + folder)
    assert SPLIT_FOLDER.fullmatch(folder)


def test_an_old_samples_table_without_split_reads_with_an_empty_split(tmp_path):
    images = write(tmp_path / "img", "train/cat/1.png", "val/dog/2.png")
    project = Project.create(tmp_path / "p", images=images)
    assert project.samples["split"].tolist() == ["train", "val"]
    old = pd.read_parquet(project.dir / "samples.parquet").drop(columns="split")
    old.to_parquet(project.dir / "samples.parquet")
    reopened = Project.open(project.dir)
    assert reopened.samples["split"].dtype == "string" and reopened.samples["split"].isna().all()
    assert reopened.samples["label"].tolist() == ["cat", "dog"]
    assert with_split(reopened.samples) is reopened.samples  # already there: unchanged


def test_exports_carry_the_split_only_when_there_are_splits(tmp_path):
    samples = pd.DataFrame({"sample_id": ["a", "b"], "path": ["a", "b"], "label": ["cat", "dog"],
                            "split": pd.array(["train", None], dtype="string")})
    table = export_table(samples)
    assert to_csv(table).decode().splitlines()[0].endswith(",decided_at,split")
    assert [r["split"] for r in json.loads(to_json(table))["samples"]] == ["train", None]
    none = export_table(samples.assign(split=pd.array([None, None], dtype="string")))
    assert "split" not in none.columns
