"""The index writes the images' quality table in its feature pass, and adds it to a project indexed without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mlfix.data.quality import QUALITY_FILE, QUALITY_KEY, QUALITY_STATS, measure_images, read_quality
from mlfix.project import Project
from tests.conftest import FAST_SETTINGS

SETTINGS = {**FAST_SETTINGS, "words": 16}


@pytest.fixture
def folder_with_defects(tiny_image_folder):
    Image.new("RGB", (48, 48)).save(tiny_image_folder / "red" / "black.png")
    broken = tiny_image_folder / "blue" / "broken.png"
    broken.write_bytes((tiny_image_folder / "blue" / "000.png").read_bytes()[:80])  # the header reads
    return tiny_image_folder


@pytest.mark.parametrize("cell_cache_gb", [4.0, 0.0], ids=["cell cache", "two passes"])
def test_the_feature_pass_writes_a_quality_table_aligned_with_the_samples(folder_with_defects, tmp_path,
                                                                         cell_cache_gb):
    project = Project.create(tmp_path / "p", images=folder_with_defects, cell_cache_gb=cell_cache_gb, **SETTINGS)
    project.index(workers=0)
    table = read_quality(project.dir)
    samples = project.samples
    assert table is not None and len(table) == len(samples) == 42
    assert list(table.columns) == ["content_hash", *QUALITY_STATS]
    table.index = samples["path"].to_numpy()
    assert table.loc["blue/broken.png", "content_hash"] == 0
    assert table.loc["blue/broken.png", list(QUALITY_STATS)].isna().all()
    assert table.loc["red/black.png", "dark_fraction"] == 1.0
    assert (table.drop(index="blue/broken.png")["content_hash"] != 0).all()
    expected = measure_images(project.root, samples, 64)  # the same numbers from a decode-only pass
    np.testing.assert_array_equal(table["content_hash"].to_numpy(), expected["content_hash"].to_numpy())
    np.testing.assert_array_equal(table[list(QUALITY_STATS)].to_numpy(), expected[list(QUALITY_STATS)].to_numpy())
    features_key = json.loads((project.dir / "features" / "features.key.json").read_text())
    assert json.loads((project.dir / QUALITY_KEY).read_text()) == {k: v for k, v in features_key.items()
                                                                    if k != "cells"}


def test_a_project_indexed_without_it_gains_it_without_a_feature_pass(folder_with_defects, tmp_path, monkeypatch):
    project = Project.create(tmp_path / "p", images=folder_with_defects, **SETTINGS)
    project.index(workers=0)
    assert "image quality" not in {record.get("stage") for record in project.progress_log("index")}  # no extra pass
    first = read_quality(project.dir)
    (project.dir / QUALITY_FILE).unlink()
    (project.dir / QUALITY_KEY).unlink()
    assert read_quality(project.dir) is None
    features = sorted((project.dir / "features").iterdir())
    before = {path.name: path.stat().st_mtime_ns for path in features}

    def no_feature_pass(*args, **kwargs):
        raise AssertionError("the features were cached: no feature pass expected")

    monkeypatch.setattr("mlfix.pipeline.features.extract", no_feature_pass)
    project.index(workers=0)
    assert {path.name: path.stat().st_mtime_ns for path in features} == before  # the artifacts untouched
    again = read_quality(project.dir)
    assert again is not None
    np.testing.assert_array_equal(again.to_numpy(), first.to_numpy())
    stages = {record.get("stage") for record in project.progress_log("index")}
    assert "image quality" in stages


def test_a_stale_quality_table_is_not_read(folder_with_defects, tmp_path):
    project = Project.create(tmp_path / "p", images=folder_with_defects, **SETTINGS)
    project.index(workers=0)
    key = json.loads((project.dir / QUALITY_KEY).read_text())
    (project.dir / QUALITY_KEY).write_text(json.dumps({**key, "image_size": 96}))
    assert read_quality(project.dir) is None  # made from other features: the next index run remakes it
