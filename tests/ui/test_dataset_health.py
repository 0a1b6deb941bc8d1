"""The Dataset page's splits, leaks and health summary (AppTest on tiny indexed projects)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlfix.project import Project
from mlfix.ui import health_section
from tests.conftest import COLORS, shape_image
from tests.ui.test_app_pages import app_on, copy_project, plotly_figures, values

SETTINGS = {"backbone": "resnet18", "weights": "random", "image_size": 64, "words": 16, "batch_size": 32}
COPY, SOURCE = "val/red/copy.png", "train/blue/000.png"  # an exact copy across splits, with another label


def write_split_folders(root: Path) -> Path:
    """train/<colour>/ 8 images and val/<colour>/ 2 images of red, green, blue; plus COPY of SOURCE."""
    for split, count in (("train", 8), ("val", 2)):
        for c, name in enumerate(("red", "green", "blue")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed = 100 * c + i + (50 if split == "val" else 0)
                shape_image(COLORS[name], seed=seed, size=48).save(root / split / name / f"{i:03d}.png")
    shutil.copy(root / SOURCE, root / COPY)
    return root


def distinct_vectors(self) -> np.ndarray:
    """One random direction per sample, COPY's equal to SOURCE's: with random backbone weights every
    pooled vector is alike (all near copies), which would hide what the page should single out."""
    vectors = np.random.default_rng(0).normal(size=(len(self.samples), 32)).astype(np.float32)
    ids = self.samples["sample_id"].tolist()
    vectors[ids.index(COPY)] = vectors[ids.index(SOURCE)]
    return vectors


@pytest.fixture(scope="module")
def split_project(tmp_path_factory) -> Project:
    """31 images in train/val folders, indexed, with scores (and so the health summary) computed."""
    root = tmp_path_factory.mktemp("splits")
    project = Project.create(root / "project", images=write_split_folders(root / "images"), **SETTINGS).index()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Project, "pooled", distinct_vectors)
        project.scores()
    return project


def captions(at) -> list[str]:
    return [img.caption for image in at.get("image") for img in image.proto.imgs]


def test_the_page_shows_split_counts_the_leak_and_the_health_table(split_project):
    at = app_on(split_project.dir)
    counts = next(d.value for d in at.dataframe if "split" in d.value.columns)
    assert counts.set_index("split")[["blue", "green", "red", "total"]].to_dict("index") == {
        "train": {"blue": 8, "green": 8, "red": 8, "total": 24}, "val": {"blue": 2, "green": 2, "red": 3, "total": 7},
        "total": {"blue": 10, "green": 10, "red": 11, "total": 31}}
    split_chart = next(f for f in plotly_figures(at) if f.layout.xaxis.title.text is None and
                       {"train", "val"} <= set(values(f.data[0].x)))
    assert sum(sum(values(trace.y)) for trace in split_chart.data) == 31
    (leak,) = [w.value for w in at.warning]
    assert leak.startswith("1 group of copies span splits (2 images)")
    shown = captions(at)
    assert "train · blue · 000.png" in shown and "val · red · copy.png" in shown
    health = next(d.value for d in at.dataframe if "check" in d.value.columns).set_index("check")
    assert health.loc["leak", "flagged"] == 2 and health.loc["duplicates", "flagged"] == 2
    assert health.loc["leak", "threshold"] == 1.0 and health.loc["dark", "flagged"] == 0
    examples = [m.value for m in at.markdown if m.value.startswith("**")]
    assert "**duplicates** · 2 flagged" in examples and "**leak** · 2 flagged" in examples
    reasons = [c for c in shown if " · " not in c]  # the examples' captions are the checks' reasons
    assert any(c.startswith("exact copy of val/red/copy.png") for c in reasons)
    assert sum("copy" in c and ("train/blue/000.png" in c or "val/red/copy.png" in c) for c in reasons) >= 4


def test_an_unlabeled_project_runs_the_checks_that_need_no_labels_and_says_which_were_skipped(
        unlabeled_project, tmp_path):
    project = Project.open(copy_project(unlabeled_project, tmp_path / "project"))
    at = app_on(project.dir, "app_pages/dataset.py")  # an unlabeled project opens on Review
    skipped = next(c.value for c in at.caption if c.value.startswith("Skipped"))
    for check in ("knn", "cleanlab", "loss"):
        assert f"**{check}**: no labels" in skipped
    health = next(d.value for d in at.dataframe if "check" in d.value.columns)
    assert "knn" not in set(health["check"]) and "duplicates" in set(health["check"])
    assert any(c.value.startswith("No splits") for c in at.caption)
    assert (project.dir / "health.parquet").is_file()  # computed once, then read back
    assert any(i.value.startswith("No labels yet") for i in at.info)  # instead of empty per-class views
    assert not any(h.value in ("Samples per class", "Examples per class") for h in at.subheader)


def test_a_project_not_indexed_yet_says_the_checks_need_the_index(tiny_image_folder, tmp_path):
    at = app_on(Project.create(tmp_path / "p", images=tiny_image_folder).dir)
    assert any("index the project first" in c.value for c in at.caption)
    assert not any("split" in d.value.columns for d in at.dataframe)


def test_leak_groups_and_examples_from_a_scores_table():
    samples = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": ["cat", None, "dog", "dog"],
                            "split": pd.array(["train", "val", "val", None], dtype="string")})
    table = pd.DataFrame({"sample_id": ["d", "c", "b", "a"], "flag_leak": [False, True, True, True],
                          "group_duplicates": [-1, 1, 0, 0], "reason_leak": [None, "r1", "r0", "r0"],
                          "score_leak": [0.0, 1.0, 1.0, 1.0]})
    groups = health_section.leak_groups(table, samples)
    assert groups[["group", "sample_id", "label", "split"]].values.tolist() == [
        [0, "a", "cat", "train"], [0, "b", None, "val"], [1, "c", "dog", "val"]]
    assert health_section.leak_groups(table.drop(columns="flag_leak"), samples) is None
    top = health_section.check_examples(table, "leak", limit=2)
    assert top["sample_id"].tolist() == ["c", "b"]
    assert health_section.check_examples(table, "dark").empty
    assert health_section.split_counts_frame(samples.drop(columns="split")).empty
