"""The project folder: creating, indexing with per-stage caching, reading artifacts back."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mlfix.pipeline.codebook import unpack_bags
from mlfix.project import NotAProjectError, Project
from tests.conftest import FAST_SETTINGS, shape_image, write_image_folder


def mtimes(project: Project, *paths: str) -> dict[str, int]:
    return {p: (project.dir / p).stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """One indexed project shared by the read-only tests of this module."""
    folder = write_image_folder(tmp_path_factory.mktemp("images"))
    return Project.create(tmp_path_factory.mktemp("project"), images=folder, **FAST_SETTINGS).index()


@pytest.fixture
def indexed_copy(indexed, tmp_path):
    """A private copy of the indexed project, for tests that change it."""
    return Project.open(shutil.copytree(indexed.dir, tmp_path / "copy"))


def test_index_builds_every_artifact_row_aligned(indexed):
    n = len(indexed.samples)
    assert indexed.pooled().shape == (n, 512)
    assert indexed.word_grids().shape == (n, 4, 4)
    assert indexed.bags().shape == (n, FAST_SETTINGS["words"] // 8)
    assert indexed.centroids().shape == (FAST_SETTINGS["words"], 256)
    assert indexed.readable().all()
    bags = unpack_bags(indexed.bags(), FAST_SETTINGS["words"])
    for row in (0, n - 1):
        assert set(np.flatnonzero(bags[row])) == set(np.unique(indexed.word_grids()[row]).tolist())


def test_orders_are_permutations_per_class_and_overall(indexed):
    samples = indexed.samples
    assert sorted(indexed.order()) == sorted(samples["sample_id"])
    for label in indexed.labels:
        expected = samples.loc[samples["label"] == label, "sample_id"]
        assert sorted(indexed.order(label)) == sorted(expected)
    with pytest.raises(KeyError, match="no ordering for label"):
        indexed.order("purple")


def test_rerun_with_same_settings_reuses_every_artifact(indexed):
    files = ["features/pooled.npy", "features/words.npy", "codebook/bags.npy", "orders/all.npy"]
    before = mtimes(indexed, *files)
    Project.open(indexed.dir).index()
    assert mtimes(indexed, *files) == before


def test_changed_words_recompute_only_later_stages(indexed_copy):
    indexed = indexed_copy
    before = mtimes(indexed, "features/pooled.npy", "features/cells.npy", "features/words.npy")
    project = Project.open(indexed.dir).index(words=16)
    after = mtimes(project, "features/pooled.npy", "features/cells.npy", "features/words.npy")
    assert after["features/pooled.npy"] == before["features/pooled.npy"]
    assert after["features/cells.npy"] == before["features/cells.npy"]
    assert after["features/words.npy"] != before["features/words.npy"]
    assert project.bags().shape[1] == 2 and project.centroids().shape[0] == 16


def test_two_pass_path_for_cells_that_do_not_fit_gives_the_same_shapes(tmp_path, tiny_image_folder):
    project = Project.create(tmp_path / "p", images=tiny_image_folder, cell_cache_gb=0.0, **FAST_SETTINGS)
    project.index()
    assert not (project.dir / "features" / "cells.npy").exists()
    assert project.word_grids().shape == (40, 4, 4)
    assert sorted(project.order()) == sorted(project.samples["sample_id"])


def test_undecodable_images_are_reported_and_left_out(tmp_path, tiny_image_folder):
    import io

    buffer = io.BytesIO()
    shape_image((200, 0, 0), seed=9, size=64).save(buffer, format="JPEG")
    (tiny_image_folder / "red" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    project = Project.create(tmp_path / "p", images=tiny_image_folder, **FAST_SETTINGS).index()
    samples = project.samples.set_index("sample_id")
    assert samples.loc["red/truncated.jpg", "status"] == "unreadable"
    assert "red/truncated.jpg" not in set(project.order())
    problem = project.problems.set_index("path").loc["red/truncated.jpg"]
    assert problem["stage"] == "decode" and "truncated" in problem["reason"]
    assert "red/truncated.jpg" not in project.neighbours("red/000.png", k=40)
    readable_others = set(samples.index[samples["status"] != "unreadable"]) - {"red/000.png"}
    assert set(project.neighbours("red/000.png", k=len(readable_others))) == readable_others


def test_neighbours_are_nearest_first_and_exclude_the_query(indexed):
    found = indexed.neighbours("red/000.png", k=5)
    assert len(found) == 5 and "red/000.png" not in found


def test_open_refuses_a_folder_that_is_not_a_project(tmp_path):
    with pytest.raises(NotAProjectError, match="not an mlfix project"):
        Project.open(tmp_path)
    (tmp_path / "mlfix.toml").write_text("this is = = not toml")
    with pytest.raises(NotAProjectError, match="not a valid mlfix.toml"):
        Project.open(tmp_path)


def test_unknown_settings_are_refused(tmp_path, tiny_image_folder):
    with pytest.raises(ValueError, match="unknown settings"):
        Project.create(tmp_path / "p", images=tiny_image_folder, wrods=10)


def test_unindexed_project_says_how_to_index(tmp_path, tiny_image_folder):
    project = Project.create(tmp_path / "p", images=tiny_image_folder)
    assert not project.is_indexed
    with pytest.raises(RuntimeError, match="mlfix index"):
        project.order()


def test_decisions_reach_corrected_labels_and_views(indexed_copy):
    indexed = indexed_copy
    store = indexed.reviews
    store.decide(["red/000.png"], "relabel", label="blue", reviewer="ann")
    store.decide(["red/001.png"], "ok", reviewer="ann")
    corrected = indexed.corrected_labels().set_index("sample_id")
    assert corrected.loc["red/000.png", "corrected_label"] == "blue"
    assert bool(corrected.loc["red/000.png", "changed"])
    assert not corrected.loc["red/001.png", "changed"]
    assert len(indexed.decisions()) == 2
    with pytest.raises(ValueError):
        store.decide(["red/002.png"], "relabel", label="purple", reviewer="ann")
    indexed.publish_view("first reds", ["red/000.png", "red/001.png"], note="from a notebook")
    assert indexed.views()["first reds"]["sample_ids"] == ["red/000.png", "red/001.png"]


def test_scores_cover_readable_samples_and_learn_from_decisions(indexed_copy):
    project = indexed_copy
    table = project.scores()
    assert set(table.columns[:5]) == {"sample_id", "path", "label", "score", "suggested_label"}
    assert sorted(table["sample_id"]) == sorted(project.samples["sample_id"])
    mtime = (project.dir / "scores.parquet").stat().st_mtime_ns
    project.scores()
    assert (project.dir / "scores.parquet").stat().st_mtime_ns == mtime
    top = table.sort_values("score", ascending=False)["sample_id"].iloc[0]
    project.reviews.decide([top], "ok", reviewer="ann")
    rescored = project.scores().set_index("sample_id")
    assert rescored.loc[top, "score"] == rescored["score"].min()  # confirmed: leaves the queue
    assert project.cached_scores() is not None


def test_features_made_by_another_build_of_the_backbone_are_recomputed(indexed_copy):
    """The index key names the timm architecture a backbone name builds, not just the name."""
    import json

    key_file = indexed_copy.dir / "features" / "words.key.json"
    key = json.loads(key_file.read_text())
    assert key["architecture"] == key["backbone"] == "resnet18"
    pooled = indexed_copy.dir / "features" / "pooled.npy"
    before = pooled.stat().st_mtime_ns
    indexed_copy.index()
    assert pooled.stat().st_mtime_ns == before  # same key: reused
    for old in (indexed_copy.dir / "features").glob("*.key.json"):  # keys written by an older build
        old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items() if k != "architecture"}))
    Project.open(indexed_copy.dir).index()
    assert pooled.stat().st_mtime_ns != before
    assert json.loads(key_file.read_text())["architecture"] == "resnet18"
