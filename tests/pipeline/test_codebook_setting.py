"""The codebook as a project setting (``codebook = "kmeans" | "vq"``): keys, artifacts, routes, engines.

32 generated 48 px images (4 colour classes) at 64 px through a random resnet18 (a 4 x 4 grid of
256-d cells each), 16 words, batches of 8; the VQ codebook trains 60 steps instead of 400 here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlfix.cli import main
from mlfix.errors import SettingsError
from mlfix.pipeline import codebooks
from mlfix.pipeline.codebook import Codebook
from mlfix.pipeline.codebooks import (TRAINED_SOURCE, codebook_from_state, codebook_state, load_codebook,
                                      save_codebook, trained_codebook_state)
from mlfix.pipeline.vq import VQCodebook
from mlfix.progress import Progress
from mlfix.project import Project
from mlfix.settings import CODEBOOKS, CONFIG_NAME, IndexSettings, read_config
from mlfix.ui.codebook_info import CODEBOOK_NAMES
from tests.conftest import write_image_folder

SETTINGS = {"backbone": "resnet18", "weights": "random", "image_size": 64, "words": 16, "batch_size": 8}
KMEANS_FILES = {"bags.npy", "bags.key.json", "centroids.npy", "fit.json"}
KMEANS_FIT = {"cells_total", "cells_used", "k", "niter", "seed", "seconds", "advice"}


@pytest.fixture(scope="module", autouse=True)
def short_vq_training():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codebooks, "VQ_STEPS", 60)
        yield


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("cb") / "images", per_class=8)


def index(folder, images, **settings) -> Project:
    project = Project.create(folder, images=images, **{**SETTINGS, **settings})
    project.index(progress=Progress("index", log_dir=folder / "logs", terminal=False), workers=0)
    return project


def words_of(project: Project) -> np.ndarray:
    return np.load(project.dir / "features" / "words.npy")


def fit_of(project: Project) -> dict:
    return json.loads((project.dir / "codebook" / "fit.json").read_text())


def notes(project: Project) -> list[str]:
    log = (project.dir / "logs" / "index.jsonl").read_text().splitlines()
    return [record["note"] for record in map(json.loads, log) if "note" in record]


@pytest.fixture(scope="module")
def kmeans_project(images, tmp_path_factory):
    return index(tmp_path_factory.mktemp("kmeans") / "p", images)


@pytest.fixture(scope="module")
def vq_cached(images, tmp_path_factory):
    return index(tmp_path_factory.mktemp("vq") / "p", images, codebook="vq")


@pytest.fixture(scope="module")
def vq_two_pass(images, tmp_path_factory):
    return index(tmp_path_factory.mktemp("vq2") / "p", images, codebook="vq", cell_cache_gb=0)


def write_trained_weights(path, k: int, cells: np.ndarray | None = None, channels: int = 256) -> dict:
    """A weights file as ``mlfix train --vq-words K`` saves it: the backbone's state dict (the random
    resnet18 of seed 0, the one the projects here index with), the settings, and ``"vq"``: float32 CPU
    tensors named as ``VQCodebook.state()``, fitted on ``cells`` (default: random ones). Returns that
    state as numpy."""
    import torch

    from mlfix.pipeline.backbone import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("resnet18", "random", 16)
    if cells is None:
        cells = np.random.default_rng(1).normal(size=(50 * k, channels)).astype(np.float32)
    state = VQCodebook(k=k, steps=20, seed=3).fit(cells).state()
    torch.save({"backbone": backbone.model.state_dict(), "settings": {"backbone": "resnet18", "vq_words": k},
                "vq": {name: torch.from_numpy(value) for name, value in state.items()}}, path)
    return state


# ---- the setting ------------------------------------------------------------------------------

def test_kmeans_keeps_the_words_key_of_projects_indexed_before_the_setting():
    feature_key = {"samples": "abc", "backbone": "resnet18", "weights": "random", "image_size": 64}
    before = {**feature_key, "words": 1024, "seed": 0, "kmeans_iterations": 20}  # the key as it was
    assert IndexSettings().codebook == "kmeans"
    assert IndexSettings().words_key(feature_key) == before
    assert IndexSettings(codebook="vq").words_key(feature_key) == {**before, "codebook": "vq"}
    assert tuple(CODEBOOK_NAMES) == CODEBOOKS  # the pages name every choice


def test_a_bad_codebook_is_refused_naming_the_choices(tmp_path, images, capsys):
    with pytest.raises(SettingsError, match=r"^codebook must be one of kmeans, vq .*got 'vqvae'$"):
        IndexSettings(codebook="vqvae")
    assert main(["index", "--project", str(tmp_path / "p"), "--images", str(images), "--codebook", "vqvae"]) == 2
    assert "mlfix index: error: codebook must be one of kmeans, vq" in capsys.readouterr().err
    assert not (tmp_path / "p" / CONFIG_NAME).exists()  # refused before the scan


def test_the_codebook_is_kept_in_mlfix_toml(vq_cached):
    assert 'codebook = "vq"' in (vq_cached.dir / CONFIG_NAME).read_text()
    assert read_config(vq_cached.dir)[1].codebook == "vq"


# ---- states and files -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["kmeans", "vq"])
def test_a_codebook_survives_its_state_and_its_folder(kind, tmp_path):
    cells = np.random.default_rng(0).normal(size=(800, 8)).astype(np.float32)
    codebook = Codebook(k=16, niter=5) if kind == "kmeans" else VQCodebook(k=16, steps=10)
    codebooks.fit_codebook(codebook, cells)
    want = codebooks.assign_words(codebook, cells)
    shipped = codebook_from_state(codebook_state(codebook))
    save_codebook(codebook, tmp_path)
    loaded = load_codebook(tmp_path)
    for again in (shipped, loaded):
        assert type(again) is type(codebook)
        np.testing.assert_array_equal(codebooks.assign_words(again, cells), want)
    assert loaded.fit_info_ == json.loads(json.dumps(codebook.fit_info_))
    assert (tmp_path / "vq.npz").exists() == (kind == "vq")


def test_a_kmeans_codebook_saved_over_a_vq_one_loads_as_kmeans(tmp_path):
    cells = np.random.default_rng(0).normal(size=(800, 8)).astype(np.float32)
    save_codebook(VQCodebook(k=16, steps=5).fit(cells), tmp_path)
    save_codebook(Codebook(k=16, niter=2).fit(cells), tmp_path)
    assert type(load_codebook(tmp_path)) is Codebook and not (tmp_path / "vq.npz").exists()
    assert load_codebook(tmp_path / "absent") is None


def test_the_trained_state_is_read_only_from_a_file_that_carries_one(tmp_path):
    import torch

    state = write_trained_weights(tmp_path / "last.pt", k=8, channels=4)
    got = trained_codebook_state(tmp_path / "last.pt")
    assert sorted(got) == sorted(state) and all(got[n].dtype == np.float32 for n in got)
    for name in state:
        np.testing.assert_array_equal(got[name], state[name])
    torch.save({"backbone": {}}, tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    for weights in ("random", "offline", tmp_path / "plain.pt", tmp_path / "junk.pt", tmp_path / "absent.pt"):
        assert trained_codebook_state(weights) is None, weights


# ---- indexing ---------------------------------------------------------------------------------

def test_kmeans_projects_keep_their_files(kmeans_project):
    folder = kmeans_project.dir / "codebook"
    assert {p.name for p in folder.iterdir()} == KMEANS_FILES
    assert set(fit_of(kmeans_project)) <= KMEANS_FIT  # no "codebook" or "source": as before the setting
    key = json.loads((kmeans_project.dir / "features" / "words.key.json").read_text())
    features = json.loads((kmeans_project.dir / "features" / "features.key.json").read_text())
    features.pop("cells")
    assert key == {**features, "words": 16, "seed": 0, "kmeans_iterations": 20}  # the words key as before


def test_vq_gives_the_same_words_from_the_cell_cache_and_in_two_passes(vq_cached, vq_two_pass, kmeans_project):
    assert json.loads((vq_cached.dir / "features/features.key.json").read_text())["cells"] is True
    assert json.loads((vq_two_pass.dir / "features/features.key.json").read_text())["cells"] is False
    words = words_of(vq_cached)
    np.testing.assert_array_equal(words, words_of(vq_two_pass))
    assert not np.array_equal(words, words_of(kmeans_project))  # another codebook made them
    for project in (vq_cached, vq_two_pass):
        fit = fit_of(project)
        assert fit["codebook"] == "vq" and fit["source"] == "fitted on the cells" and fit["steps"] == 60
        assert (project.dir / "codebook" / "vq.npz").exists()
    np.testing.assert_array_equal(np.load(vq_cached.dir / "codebook/centroids.npy"),
                                  np.load(vq_two_pass.dir / "codebook/centroids.npy"))
    # the saved codebook assigns the cached cells to exactly the stored words
    cells = np.load(vq_cached.dir / "features" / "cells.npy").astype(np.float32)
    np.testing.assert_array_equal(load_codebook(vq_cached.dir / "codebook").assign(cells), words)


def test_switching_codebooks_reuses_the_cells_and_back_to_kmeans_gives_its_words(vq_cached, kmeans_project, tmp_path):
    import shutil

    folder = tmp_path / "p"
    shutil.copytree(vq_cached.dir, folder)
    cells_before = (folder / "features" / "cells.npy").stat().st_mtime_ns
    project = Project.open(folder)
    project.index(progress=Progress("index", log_dir=folder / "logs", terminal=False), workers=0, codebook="kmeans")
    assert (folder / "features" / "cells.npy").stat().st_mtime_ns == cells_before  # no forward pass
    assert not (folder / "codebook" / "vq.npz").exists()
    np.testing.assert_array_equal(words_of(project), words_of(kmeans_project))
    assert "codebook" not in json.loads((folder / "features" / "words.key.json").read_text())


def cached_cells(project: Project) -> np.ndarray:
    """(N * h * w, C) float32: the project's cell cache (the cells of the random resnet18 of seed 0)."""
    cells = np.load(project.dir / "features" / "cells.npy")
    return cells.reshape(-1, cells.shape[-1]).astype(np.float32)


def test_a_codebook_trained_with_the_backbone_is_used_without_a_fit(images, tmp_path, vq_cached):
    state = write_trained_weights(tmp_path / "last.pt", k=16, cells=cached_cells(vq_cached))
    project = index(tmp_path / "p", images, codebook="vq", weights=str(tmp_path / "last.pt"))
    fit = fit_of(project)
    assert fit["source"] == TRAINED_SOURCE and fit["cells_used"] == 0
    cells = np.load(project.dir / "features" / "cells.npy").astype(np.float32)
    np.testing.assert_array_equal(words_of(project), VQCodebook.from_state(state).assign(cells))
    assert len(np.unique(words_of(project))) > 4  # the trained codes fit these cells
    assert any("trained with the backbone" in note and "no fit" in note for note in notes(project))


def test_a_trained_codebook_of_another_size_is_replaced_by_a_fit_that_says_why(images, tmp_path):
    write_trained_weights(tmp_path / "last.pt", k=24)
    project = index(tmp_path / "p", images, codebook="vq", weights=str(tmp_path / "last.pt"))
    assert fit_of(project)["source"] == "fitted on the cells"
    assert any("has 24 words, the project asks for 16" in note for note in notes(project))
    kmeans = index(tmp_path / "k", images, weights=str(tmp_path / "last.pt"))
    assert not any("codebook vq" in note for note in notes(kmeans))  # kmeans never looks at it


# ---- the Ray engine (one test: an actor pool start costs ~40 s) ---------------------------------

def test_the_ray_engine_gives_the_local_vq_words_fitted_or_trained(vq_two_pass, vq_cached, images, tmp_path,
                                                                     monkeypatch):
    ray = pytest.importorskip("ray")
    from tests.pipeline.test_ray_engine import in_process_pipeline

    from mlfix.pipeline import ray_engine

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        project = index(tmp_path / "ray", images, codebook="vq", engine="ray")
        np.testing.assert_array_equal(words_of(project), words_of(vq_two_pass))
        assert fit_of(project) == {**fit_of(vq_two_pass), "seconds": fit_of(project)["seconds"]}
        # trained with the backbone: no sample pass; the actors' code, run in this process
        write_trained_weights(tmp_path / "last.pt", k=16, cells=cached_cells(vq_cached))
        calls: list = []
        monkeypatch.setattr(ray_engine, "_pipeline", in_process_pipeline(calls))
        trained = index(tmp_path / "trained", images, codebook="vq", engine="ray", weights=str(tmp_path / "last.pt"))
        assert calls and all(full_pass for full_pass, _ in calls)
        assert fit_of(trained)["source"] == TRAINED_SOURCE
        local = index(tmp_path / "local", images, codebook="vq", weights=str(tmp_path / "last.pt"))
        np.testing.assert_array_equal(words_of(trained), words_of(local))
        assert len(np.unique(words_of(local))) > 4
    finally:
        ray.shutdown()


# ---- the Codebook page --------------------------------------------------------------------------

@pytest.mark.parametrize("fixture, name", [("vq_cached", "learned VQ codebook"), ("kmeans_project", "KMeans")])
def test_the_codebook_page_says_which_codebook_made_the_words(fixture, name, request):
    from tests.ui.test_app_pages import app_on

    project = request.getfixturevalue(fixture)
    at = app_on(project.dir, "app_pages/codebook.py")
    bags = np.unpackbits(np.asarray(project.bags()), axis=1, bitorder="little")[:, :16]
    used = int(bags.any(axis=0).sum())
    captions = [c.value for c in at.caption]
    assert f"Words: {name} (16 words, {used} used)" in captions
    vq_lines = [c for c in captions if c.startswith("VQ codebook ")]
    if name == "KMeans":
        assert not vq_lines
    else:
        fit = fit_of(project)
        assert vq_lines == [f"VQ codebook fitted on the cells: {fit['words_used']} of 16 codes used on "
                            f"{fit['cells_used']} training cells, {fit['restarts']:,} dead codes restarted, "
                            f"reconstruction error {fit['reconstruction']:.3g} (standardised cells), "
                            f"{fit['seconds']:,} s."]


def test_the_training_page_puts_the_chosen_codebook_on_the_index_command_line(tmp_path, monkeypatch):
    from mlfix.service import jobs
    from tests.ui.test_training_engine import commands as recorded_commands, training_page

    commands = recorded_commands.__wrapped__(monkeypatch)  # the fixture's body: the page's command lines
    project = Project.create(tmp_path / "p", write_image_folder(tmp_path / "images", per_class=2))
    at = training_page(project)
    assert any("1024 words (KMeans)" in m.value for m in at.markdown)
    assert at.selectbox(key="ix_codebook").value == "kmeans"
    at.selectbox(key="ix_codebook").set_value("vq").run()
    at.button(key="ix_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert jobs.wait_job(project.dir, timeout=60).state == "finished"
    assert [command[6:] for command in commands] == [["--codebook", "vq"]]
