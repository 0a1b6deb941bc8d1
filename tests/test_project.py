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


def test_the_orders_are_written_and_the_combined_order_is_the_default(indexed):
    from mlfix.pipeline.ordering.embedding import embedding_order

    assert indexed.orderings() == ["combined", "embedding", "words"]
    assert list(indexed.order()) == list(indexed.order(by="combined"))
    assert list(indexed.order()) != list(indexed.order(by="embedding"))
    assert list(indexed.order_rows(by="words")) == list(np.load(indexed.dir / "orders" / "all.npy"))
    samples = indexed.samples
    for label in indexed.labels:
        rows = np.flatnonzero((samples["label"] == label).to_numpy())
        embedding_rows = rows[embedding_order(np.asarray(indexed.pooled()[rows]))]
        assert list(indexed.order_rows(label, by="embedding")) == list(embedding_rows)
        assert sorted(indexed.order(label, by="words")) == sorted(samples["sample_id"].to_numpy()[rows])
    with pytest.raises(ValueError, match="by must be one of"):
        indexed.order(by="colour")


def test_the_combined_order_chains_the_embedding_beside_the_weighted_bag_of_words(indexed, monkeypatch):
    from mlfix.pipeline import index as index_module
    from mlfix.pipeline.ordering.embedding import embedding_order
    from mlfix.pipeline.ordering.weighted import centre_weights, combined_vectors, weighted_bags

    words, ok = np.asarray(indexed.word_grids()), np.load(indexed.dir / "features" / "ok.npy")
    bags = weighted_bags(words, indexed.settings.words, "tfidf", focus=centre_weights(*words.shape[1:]), ok=ok,
                         sublinear=True)
    vectors = combined_vectors(np.asarray(indexed.pooled(), dtype=np.float32), bags)
    samples = indexed.samples
    for label in indexed.labels:
        rows = np.flatnonzero((samples["label"] == label).to_numpy() & ok)
        assert list(indexed.order_rows(label, by="combined")) == list(rows[embedding_order(vectors[rows])])
    assert sorted(indexed.order(by="combined")) == sorted(samples["sample_id"].to_numpy()[ok])
    # above its size cap the combined order is not built, and the run says so
    monkeypatch.setattr(index_module, "COMBINED_MAX", 2)
    notes = []
    monkeypatch.setattr(index_module.Progress, "note", lambda self, text, stage=None: notes.append(text))
    shutil.rmtree(indexed.dir / "orders" / "by-combined")
    Project.open(indexed.dir).index()
    assert "combined" not in Project.open(indexed.dir).orderings()
    assert any("combined order is built up to 2 images" in note for note in notes)
    monkeypatch.undo()
    Project.open(indexed.dir).index()  # restored for the other tests of the module
    assert "combined" in Project.open(indexed.dir).orderings()


def test_a_project_indexed_before_the_embedding_order_falls_back_then_gains_it(indexed_copy):
    from mlfix.errors import NotIndexedError

    shutil.rmtree(indexed_copy.dir / "orders" / "by-embedding")
    shutil.rmtree(indexed_copy.dir / "orders" / "by-combined")  # an mlfix before both orders
    old = Project.open(indexed_copy.dir)
    assert old.orderings() == ["words"]
    assert list(old.order("red")) == list(old.order("red", by="words"))
    with pytest.raises(NotIndexedError, match="mlfix index"):
        old.order(by="embedding")
    files = ["features/pooled.npy", "features/words.npy", "codebook/bags.npy", "orders/all.npy"]
    before = mtimes(old, *files)
    project = Project.open(indexed_copy.dir).index()
    assert mtimes(project, *files) == before  # no pass over the images, the words orders kept
    assert project.orderings() == ["combined", "embedding", "words"]
    assert sorted(project.order(by="embedding")) == sorted(project.samples["sample_id"])


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


def test_a_large_projects_neighbour_index_is_built_once_and_kept_on_disk(indexed_copy, monkeypatch):
    from mlfix.scoring import neighbours

    monkeypatch.setattr(neighbours, "APPROXIMATE_MIN", 5)  # this tiny project counts as large
    indexed_copy.index()  # every artifact reused; the neighbour index made for the app's first page
    assert (indexed_copy.dir / "features" / "neighbours.faiss").is_file()
    found = indexed_copy.neighbours("red/000.png", k=5)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the stored neighbour index was built again")

    monkeypatch.setattr(neighbours, "search_index", no_rebuild)
    assert Project.open(indexed_copy.dir).neighbours("red/000.png", k=5) == found
    (indexed_copy.dir / "features" / "words.key.json").write_text('{"changed": true}')  # new features: rebuilt
    with pytest.raises(AssertionError, match="built again"):
        Project.open(indexed_copy.dir).neighbours("red/000.png", k=5)


def test_open_refuses_a_folder_that_is_not_a_project(tmp_path):
    with pytest.raises(NotAProjectError, match="not an mlfix project"):
        Project.open(tmp_path)
    (tmp_path / "mlfix.toml").write_text("this is = = not toml")
    with pytest.raises(NotAProjectError, match="not a valid mlfix.toml"):
        Project.open(tmp_path)


def test_unknown_settings_are_refused(tmp_path, tiny_image_folder):
    with pytest.raises(ValueError, match="unknown settings"):
        Project.create(tmp_path / "p", images=tiny_image_folder, wrods=10)


def test_a_setting_that_fails_is_not_kept_and_is_checked_before_the_scan(tmp_path, tiny_image_folder):
    from mlfix.errors import SettingsError

    with pytest.raises(SettingsError, match="weights file not found"):
        Project.create(tmp_path / "q", images=tiny_image_folder, weights=str(tmp_path / "nothere.pt"))
    assert not (tmp_path / "q" / "samples.parquet").exists()  # refused before any scanning
    project = Project.create(tmp_path / "p", images=tiny_image_folder, **FAST_SETTINGS)
    with pytest.raises(SettingsError, match="weights file not found"):
        project.index(weights=str(tmp_path / "nothere.pt"))
    with pytest.raises(SettingsError, match="unknown backbone 'resnet1800'"):
        project.index(backbone="resnet1800")
    with pytest.raises(SettingsError, match="no checkpoint"):
        project.index(weights="trained")
    kept = Project.open(project.dir).settings
    assert kept.backbone == FAST_SETTINGS["backbone"] and str(kept.weights) == FAST_SETTINGS["weights"]


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


def is_most_suspect_first(table) -> bool:
    score = table["score"].to_numpy(dtype=float)
    scored = score[~np.isnan(score)]
    return bool((np.diff(scored) <= 0).all()) and not np.isnan(score[:len(scored)]).any()


def test_scores_come_most_suspect_first_with_ties_in_sample_order_on_both_paths(indexed_copy):
    project = indexed_copy
    table = project.scores()
    assert is_most_suspect_first(table)
    rows = table["sample_id"].map(project.row_of)
    for _, group in rows.groupby(table["score"]):  # equal scores keep the sample order (stable)
        assert group.is_monotonic_increasing
    assert table.index.tolist() == list(range(len(table)))
    assert project.cached_scores()["sample_id"].tolist() == table["sample_id"].tolist()
    # a table written unsorted (by an older mlfix) under the same key comes back sorted too
    table.sample(frac=1, random_state=0).to_parquet(project.dir / "scores.parquet")
    again = project.scores()
    assert again["sample_id"].tolist() == table["sample_id"].tolist()
    np.testing.assert_array_equal(again["score"], table["score"])


def test_an_unlabeled_folder_is_a_clear_error_that_names_the_similarity_order(unlabeled_project):
    from mlfix.errors import MlfixError, NotEnoughLabelsError

    project = Project.open(unlabeled_project.dir)
    assert project.labels == [] and project.is_indexed
    assert project.scores_unavailable().startswith("no labels: label-error scores need at least two classes")
    with pytest.raises(NotEnoughLabelsError, match="^no labels: label-error scores need at least two classes; "
                                                    "the similarity order works: open the Review page"):
        project.scores()
    assert issubclass(NotEnoughLabelsError, MlfixError)
    assert not (project.dir / "scores.parquet").exists()
    assert len(project.order()) == len(project.samples)  # what works instead


def test_one_class_and_mixed_labels(tmp_path):
    """One class: the same clear error. Some samples unlabeled: the labelled ones are scored, the
    others have no score and come last."""
    from mlfix.errors import NotEnoughLabelsError

    images = write_image_folder(tmp_path / "images", per_class=6, classes=("red", "blue"))
    paths = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    one = tmp_path / "one.csv"
    one.write_text("path,label\n" + "".join(f"{p},{'red' if i < 3 else ''}\n" for i, p in enumerate(paths)))
    project = Project.create(tmp_path / "p", images=images, labels=one, **FAST_SETTINGS).index()
    with pytest.raises(NotEnoughLabelsError, match=r"^one class only \('red'\): label-error scores"):
        project.scores()
    mixed = tmp_path / "mixed.csv"  # every third image unlabeled
    mixed.write_text("path,label\n" + "".join(f"{p},{'' if i % 3 == 0 else p.split('/')[0]}\n"
                                              for i, p in enumerate(paths)))
    project = Project.create(tmp_path / "p", images=images, labels=mixed).index()
    table = project.scores()
    unlabeled = table["label"].isna().to_numpy()
    assert unlabeled.sum() == 4 and len(table) == 12
    assert table["score"][~unlabeled].notna().all() and table["score"][unlabeled].isna().all()
    assert unlabeled[-4:].all() and is_most_suspect_first(table)
