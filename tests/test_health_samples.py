"""Which samples the health checks flag, on a set without labels (no label scores): kept by
Project.health() as health_samples.parquet, shown by the Dataset page's examples and named by
`mlfix status --health`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from mlfix.cli import main
from mlfix.project import Project
from mlfix.ui.health_section import check_examples, leak_groups

SETTINGS = {"backbone": "resnet18", "weights": "random", "image_size": 64, "words": 16, "batch_size": 32}
BLACK, COPY, ORIGINAL = "train/black.png", "val/copy.png", "train/0.png"


@pytest.fixture(scope="module")
def unlabeled_splits(tmp_path_factory) -> Project:
    """train/ 8 noise images and val/ 3, no labels; an all-black image and a copy across splits."""
    root = tmp_path_factory.mktemp("splits") / "images"
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / split / f"{i}.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / BLACK)
    shutil.copy(root / ORIGINAL, root / COPY)
    return Project.create(tmp_path_factory.mktemp("p") / "project", images=root, **SETTINGS).index()


def test_an_unlabeled_set_keeps_which_samples_the_checks_flag(unlabeled_splits, capsys):
    project = unlabeled_splits
    assert project.health_samples() is None
    summary = project.health().set_index("check")
    table = project.health_samples()
    assert sorted(table["sample_id"]) == sorted(project.samples["sample_id"])
    assert not (project.dir / "scores.parquet").exists()  # still no label scores
    for check in ("dark", "leak", "duplicates"):
        assert int(table[f"flag_{check}"].sum()) == summary.loc[check, "flagged"]
    assert check_examples(table, "dark")["sample_id"].tolist()[0] == BLACK
    leaked = leak_groups(table, project.samples).set_index("sample_id")  # random weights: near copies too
    assert leaked.loc[ORIGINAL, "group"] == leaked.loc[COPY, "group"]
    assert table.set_index("sample_id").loc[COPY, "reason_duplicates"] == f"exact copy of {ORIGINAL} in split train"
    assert main(["status", "--project", str(project.dir)]) == 0
    out = capsys.readouterr().out
    assert f"which samples: {project.dir / 'health_samples.parquet'}" in out
    assert "scores    none: no labels" in out


def test_a_summary_stored_without_the_per_sample_table_is_computed_again(unlabeled_splits):
    project = unlabeled_splits
    summary = project.health()
    (project.dir / "health_samples.parquet").unlink()  # as an older mlfix left it: the summary alone
    assert project.health().equals(summary)
    assert project.health_samples() is not None
