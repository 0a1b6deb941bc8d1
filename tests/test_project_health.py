"""Project.scores() with the health checks, Project.health() and image_meta(), on small projects with
planted defects (an all-black image, an exact copy under another label in another split, a stretched
image, a tiny one, a grayscale one); an unlabeled project and one without splits."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from mlfix.data.quality import QUALITY_STATS
from mlfix.errors import NotEnoughLabelsError
from mlfix.project import Project
from mlfix.scoring.health_checks import HEALTH_CHECKS
from mlfix.scoring.registry import METHODS
from tests.conftest import write_image_folder

SETTINGS = {"backbone": "resnet18", "weights": "random", "image_size": 64, "words": 16, "batch_size": 32}
COPY, ORIGINAL = "blue/copy.png", "red/000.png"
PLANTED = {"red/black.png": "dark", "green/wide.png": "odd_aspect", "green/tiny.png": "tiny",
           "blue/gray.png": "grayscale"}


def _plant(images) -> None:
    Image.new("RGB", (48, 48)).save(images / "red" / "black.png")
    shutil.copy(images / ORIGINAL, images / COPY)  # the same pixels, labelled blue
    Image.open(images / "green" / "001.png").resize((192, 24)).save(images / "green" / "wide.png")
    Image.open(images / "green" / "002.png").resize((8, 8)).save(images / "green" / "tiny.png")
    Image.open(images / "blue" / "003.png").convert("L").convert("RGB").save(images / "blue" / "gray.png")
    Image.open(images / "red" / "004.png").filter(ImageFilter.GaussianBlur(4)).save(images / "red" / "blur.png")


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Project:
    """24 images in 3 classes with the defects of :data:`PLANTED` and the copy; splits from the CSV
    (the copy in test, its original in train)."""
    root = tmp_path_factory.mktemp("health")
    images = write_image_folder(root / "images", per_class=6, classes=("red", "green", "blue"))
    _plant(images)
    paths = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    csv = root / "labels.csv"
    csv.write_text("path,label,split\n" + "".join(
        f"{p},{p.split('/')[0]},{'test' if p == COPY or i % 5 == 4 else 'train'}\n" for i, p in enumerate(paths)))
    return Project.create(root / "project", images=images, labels=csv, **SETTINGS).index()


def _row(table: pd.DataFrame, sample_id: str) -> pd.Series:
    return table.set_index("sample_id").loc[sample_id]


def test_image_meta_holds_sizes_splits_and_the_statistics(planted):
    meta = planted.image_meta()
    assert list(meta.columns) == ["width", "height", "split", "content_hash", *QUALITY_STATS]
    assert isinstance(meta.index, pd.RangeIndex) and len(meta) == len(planted.samples)
    wide = planted.row_of("green/wide.png")
    assert (meta.loc[wide, "width"], meta.loc[wide, "height"]) == (192, 24)
    assert meta["width"].dtype == np.int64 and meta["split"].dtype == "string"
    copy, original = planted.row_of(COPY), planted.row_of(ORIGINAL)
    assert meta.loc[copy, "content_hash"] == meta.loc[original, "content_hash"] != 0
    assert (meta.loc[copy, "split"], meta.loc[original, "split"]) == ("test", "train")
    rows = np.array([copy, wide])
    pd.testing.assert_frame_equal(planted.image_meta(rows), meta.iloc[rows].reset_index(drop=True))


def test_scores_carry_every_health_check_and_find_the_planted_defects(planted):
    table = planted.scores()
    for name in HEALTH_CHECKS:
        assert {f"score_{name}", f"flag_{name}", f"reason_{name}"} <= set(table.columns), name
    assert table.attrs["skipped"] == {}  # labels, splits, statistics, bags: every check ran
    for sample_id, check in PLANTED.items():
        row = _row(table, sample_id)
        assert row[f"flag_{check}"] and isinstance(row[f"reason_{check}"], str), (sample_id, check)
    copy, original = _row(table, COPY), _row(table, ORIGINAL)
    assert copy["flag_duplicates"] and copy["score_duplicates"] == 1.0 and copy["conflict_duplicates"]
    assert copy["group_duplicates"] == original["group_duplicates"]
    assert copy["flag_leak"] and original["flag_leak"]
    assert table["sample_id"][0] in (COPY, ORIGINAL) and table["score"][0] > 1  # the label conflict first
    assert not _row(table, "red/001.png")["flag_dark"]


def test_health_counts_each_checks_flags_and_is_cached(planted, monkeypatch):
    table, health = planted.scores(), planted.health()
    assert health["check"].tolist() == list(METHODS)
    rows = health.set_index("check")
    for name in HEALTH_CHECKS:
        assert rows.loc[name, "flagged"] == int(table[f"flag_{name}"].sum()), name
        assert rows.loc[name, "samples"] == int(table[f"score_{name}"].notna().sum())
    assert rows.loc["dark", "flagged"] >= 1 and rows.loc["leak", "flagged"] >= 2
    assert rows["skipped"].isna().all()
    import mlfix.scoring.registry as registry

    monkeypatch.setattr(registry, "compute_scores", lambda *a, **k: pytest.fail("recomputed"))
    pd.testing.assert_frame_equal(planted.health(), health)  # cached with the scores, same key
    planted.reviews.decide([COPY], "ok", reviewer="t")  # a decision: both recompute
    monkeypatch.undo()
    table = planted.scores()
    assert _row(table, COPY)["score"] == 0.0  # a reviewed copy leaves the queue


@pytest.fixture(scope="module")
def unlabeled(unlabeled_project, tmp_path_factory) -> Project:
    """A private copy of the indexed unlabeled folder (no labels, no splits)."""
    return Project.open(shutil.copytree(unlabeled_project.dir, tmp_path_factory.mktemp("u") / "p"))


def test_an_unlabeled_project_has_health_but_no_label_scores(unlabeled):
    with pytest.raises(NotEnoughLabelsError, match=r"^no labels: label-error scores need at least two classes; "
                                                   r".*the checks that need no labels .*`project.health\(\)`"):
        unlabeled.scores()
    health = unlabeled.health().set_index("check")
    for name in ("knn", "cleanlab", "loss", "combined", "class_outlier"):
        assert health.loc[name, "skipped"].startswith("no labels: "), name
    assert health.loc["duplicates", "samples"] == len(unlabeled.samples)
    assert health.loc["outlier", "samples"] == len(unlabeled.samples)
    assert health.loc["leak", "skipped"].startswith("no split column: give a `split` column in the labels CSV")
    assert pd.isna(health.loc["dark", "skipped"])
    assert not (unlabeled.dir / "scores.parquet").exists()
    assert (unlabeled.dir / "health.parquet").exists()


def test_status_prints_the_health_summary(unlabeled, capsys):
    from mlfix.cli import main

    (unlabeled.dir / "health.parquet").unlink(missing_ok=True)
    assert main(["status", "--project", str(unlabeled.dir)]) == 0
    out = capsys.readouterr().out
    assert "health    not checked yet: `mlfix status --health" in out
    assert not (unlabeled.dir / "health.parquet").exists()  # status alone starts nothing
    assert main(["status", "--health", "--project", str(unlabeled.dir)]) == 0
    out = capsys.readouterr().out
    assert "health    16 checks:" in out
    assert "  duplicates " in out and "  leak " in out and "skipped: no split column" in out
    assert "  knn " in out and "skipped: no labels" in out
    assert main(["status", "--project", str(unlabeled.dir)]) == 0  # now cached
    assert "  duplicates " in capsys.readouterr().out
