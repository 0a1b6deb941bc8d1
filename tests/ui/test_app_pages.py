"""AppTest for the app shell and the Dataset, Codebook and Export pages (Training: test_training_page.py).

Each test runs the real ``app.py`` (navigation + sidebar) on a small generated project and checks
what the page shows: chart data, table rows, messages, download bytes.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest
from streamlit.testing.v1 import AppTest

from mlfix.service import jobs
from mlfix.project import Project
from mlfix.review.store import ReviewStore
from mlfix.ui import access
from mlfix.ui import state as ui_state
from tests.s3 import s3_server  # noqa: F401  (a session fixture)

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT = 120  # generous: the CI machine is small and shared


# ------------------------------------------------------------------------------------ helpers


def app_on(project_dir, page: str | None = None) -> AppTest:
    """The app, run once with ``project_dir`` open, then switched to ``page`` and run again."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if project_dir is not None:
        at.session_state[ui_state.PROJECT_KEY] = str(project_dir)
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def plotly_figures(at: AppTest) -> list:
    return [pio.from_json(chart.proto.spec) for chart in at.get("plotly_chart")]


def values(array) -> list:
    """Plot data as a list, whether plotly stored it plainly or as a typed binary array."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def copy_project(source: Project, target: Path) -> Path:
    """A private copy of an indexed project (the images stay where they are, read-only)."""
    shutil.copytree(source.dir, target, ignore=shutil.ignore_patterns("reviews.db*", "jobs", "thumbs",
                                                                         "views", "progress"))
    return target


@pytest.fixture
def project_copy(demo_project, tmp_path) -> Project:
    return Project.open(copy_project(demo_project, tmp_path / "project"))


@pytest.fixture
def media(monkeypatch):
    """Every media file (images, downloads) the app stores, by its URL file name."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    stored: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        stored[file_id] = self._files_by_id[file_id].content
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", load_and_get_id)
    return stored


def table(at: AppTest, *columns: str) -> pd.DataFrame:
    """The one dataframe on the page with these columns (AppTest does not expose a table's key)."""
    found = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert len(found) == 1, f"{len(found)} dataframes with columns {columns}"
    return found[0]


def download(at: AppTest, media: dict, label: str) -> bytes:
    button = next(b for b in at.get("download_button") if b.proto.label == label)
    return media[Path(button.proto.url).stem]


@pytest.fixture
def project_with_problems(tiny_image_folder, tmp_path) -> Project:
    (tiny_image_folder / "red" / "broken.png").write_bytes(b"not a png at all")
    (tiny_image_folder / "blue" / "empty.jpg").write_bytes(b"")
    return Project.create(tmp_path / "proj", images=tiny_image_folder)


# ------------------------------------------------------------------------------------ shell


def test_state_reads_the_project_from_the_script_argument_and_the_environment(monkeypatch):
    assert ui_state._argv_project(["--project", "/data/p", "--other", "x"]) == "/data/p"
    assert ui_state._argv_project(["--unrelated"]) is None
    assert ui_state._argv_project(["--project"]) is None  # no value: absent, not a crash
    at = AppTest.from_string(
        "import streamlit as st\nfrom mlfix.ui import access, state\nst.write(str(state.project_dir()))\n"
        "st.write(access.reviewer())", default_timeout=TIMEOUT)
    monkeypatch.setenv("MLFIX_PROJECT", "/from/env")
    monkeypatch.setenv("MLFIX_REVIEWER", "carol")
    at.run()
    assert [m.value for m in at.markdown] == ["/from/env", "carol"]
    at.session_state[ui_state.PROJECT_KEY] = "/from/session"
    at.run()
    assert at.markdown[0].value == "/from/session"  # the sidebar's choice wins over the environment


def test_the_sidebar_shows_the_project_and_the_reviewer(project_with_problems, tmp_path):
    at = app_on(project_with_problems.dir)
    assert at.sidebar.text_input(key="mlfix_project_input").value == str(project_with_problems.dir)
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "40 samples" in captions and "4 classes" in captions and "not indexed yet" in captions
    project_with_problems.classes.add("zebra", reviewer="admin")  # added on the Review page: counted too
    captions = " ".join(c.value for c in app_on(project_with_problems.dir).sidebar.caption)
    assert "5 classes" in captions
    # AppTest reruns only the page after the first run, so drive the sidebar on its own.
    side = AppTest.from_string("from mlfix.ui import access, sidebar, state\nimport streamlit as st\n"
                               "sidebar.render()\nst.write(access.reviewer())\n"
                               "st.write(str(state.project_dir()))", default_timeout=TIMEOUT)
    side.run()
    side.sidebar.text_input(key=access.REVIEWER_KEY).input("alice").run()
    assert side.markdown[0].value == "alice"
    side.sidebar.text_input(key="mlfix_project_input").input(str(tmp_path)).run()
    assert side.markdown[1].value == str(tmp_path.resolve())
    assert any("Not an mlfix project" in w.value for w in side.sidebar.warning)
    at.switch_page("app_pages/export.py").run()  # the shared sidebar is on every page
    assert at.sidebar.text_input(key="mlfix_project_input").value == str(project_with_problems.dir)


def test_a_deep_link_runs_the_page_inside_the_shell(project_with_problems):
    """A first request for /training gets the shell: the pages live in app_pages/, not pages/, so
    Streamlit never falls back to its legacy multipage mode (which runs a page without the shell)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state[ui_state.PROJECT_KEY] = str(project_with_problems.dir)
    at.switch_page("app_pages/training.py")
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Training"]
    assert at.sidebar.text_input(key="mlfix_project_input").value == str(project_with_problems.dir)


@pytest.mark.parametrize("page", ["app_pages/dataset.py", "app_pages/training.py", "app_pages/codebook.py",
                                  "app_pages/export.py"])
def test_a_folder_that_is_not_a_project_is_a_clear_message_on_every_page(tmp_path, page):
    at = app_on(tmp_path, page)
    assert any("not an mlfix project" in e.value for e in at.error), [e.value for e in at.error]


@pytest.mark.parametrize("page", ["app_pages/training.py", "app_pages/codebook.py", "app_pages/export.py"])
def test_no_project_open_sends_the_user_to_the_dataset_page(page, monkeypatch):
    monkeypatch.delenv("MLFIX_PROJECT", raising=False)
    at = app_on(None, page)
    assert any("No project is open" in i.value for i in at.info)


def test_a_project_whose_images_came_without_labels_opens_on_the_review_page(unlabeled_project, project_copy,
                                                                              tmp_path):
    at = app_on(copy_project(unlabeled_project, tmp_path / "unlabeled"))
    assert any(i.value.startswith("No classes yet") for i in at.info)  # Review, in label mode
    assert not at.metric  # not the Dataset page
    labelled = app_on(project_copy.dir)  # a labelled project still opens on the Dataset page
    assert {m.label for m in labelled.metric} >= {"Samples", "Classes"}


# ------------------------------------------------------------------------------------ dataset


def test_dataset_page_shows_counts_examples_and_problems(project_with_problems):
    at = app_on(project_with_problems.dir)  # the Dataset page is the default page
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Samples": "40", "Classes": "4", "Problems": "2", "Index": "not built"}
    (figure,) = plotly_figures(at)
    assert sorted(zip(values(figure.data[0].x), values(figure.data[0].y))) == [
        ("blue", 10), ("green", 10), ("red", 10), ("yellow", 10)]
    images = at.get("image")
    assert len(images) == 4 and all(len(i.value) == 8 for i in images)  # 8 examples per class
    assert sorted(at.markdown[i].value.split("**")[1] for i in range(len(at.markdown))
                  if at.markdown[i].value.startswith("**"))[:4] == ["blue", "green", "red", "yellow"]
    problems = table(at, "sample_id", "reason")
    assert sorted(problems["path"]) == ["blue/empty.jpg", "red/broken.png"]
    reasons = dict(zip(problems["path"], problems["reason"]))
    assert "empty file" in reasons["blue/empty.jpg"]
    assert "not an image" in reasons["red/broken.png"]
    at.slider(key="ds_per_class").set_value(3).run()
    assert all(len(i.value) == 3 for i in at.get("image"))


@pytest.mark.parametrize("kind", ["folder", "zip", "s3"])
def test_no_project_offers_to_create_one_from_a_folder_a_zip_or_a_bucket(tiny_image_folder, tmp_path, monkeypatch,
                                                                         kind, s3_server):  # noqa: F811
    monkeypatch.delenv("MLFIX_PROJECT", raising=False)
    images = {"folder": lambda: tiny_image_folder,
              "zip": lambda: shutil.make_archive(str(tmp_path / "images"), "zip", tiny_image_folder),
              "s3": lambda: s3_server.upload(tiny_image_folder, f"app-{tmp_path.name}/images")}[kind]()
    at = app_on(None)
    assert any("Open an existing project" in i.value for i in at.info)
    target = tmp_path / "new-project"
    at.text_input(key="ds_new_dir").input(str(target))
    at.text_input(key="ds_images").input(str(images))
    at.checkbox(key="ds_start_index").uncheck()
    at.checkbox(key="ds_tta_flip").check()
    at.button(key="ds_create").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # the scan runs in a job (its own process), never in the server's: the page follows it
    assert jobs.current_job(target)["args"][-1] == "--scan-only"
    assert any("Scanning started" in s.value for s in at.success)
    assert jobs.wait_job(target, timeout=60).state == "finished", jobs.job_status(target).log_tail
    at.run()
    assert Project.is_project(target)
    assert Project.open(target).settings.tta_flip is True
    assert at.session_state[ui_state.PROJECT_KEY] == str(target.resolve())
    assert {m.label: m.value for m in at.metric}["Samples"] == "40"


def test_images_that_cannot_be_read_are_refused_before_the_job_starts(tmp_path, monkeypatch, s3_server):  # noqa: F811
    monkeypatch.delenv("MLFIX_PROJECT", raising=False)
    for images, message in ((str(tmp_path / "nowhere"), "were not found at"),
                            (s3_server.uri("app-images/no-such-prefix"), "nothing is stored under"),
                            ("s3://KEY:SECRET@bucket/photos", "carries credentials")):
        at = app_on(None)
        at.text_input(key="ds_new_dir").input(str(tmp_path / "p"))
        at.text_input(key="ds_images").input(images)
        at.button(key="ds_create").click().run()
        assert not at.exception and any(message in e.value for e in at.error), [e.value for e in at.error]
        assert jobs.current_job(tmp_path / "p") is None and not Project.is_project(tmp_path / "p")


def _create_with_csv(at: AppTest, images: Path, target: Path, content: bytes) -> AppTest:
    at.text_input(key="ds_new_dir").input(str(target))
    at.text_input(key="ds_images").input(str(images))
    at.radio(key="ds_source").set_value("csv").run()
    at.file_uploader(key="ds_csv_upload").upload("labels.csv", content, "text/csv")
    at.checkbox(key="ds_start_index").uncheck()
    at.button(key="ds_create").click().run()
    if jobs.current_job(target):  # the scan runs in a job: wait for it, then show the project
        jobs.wait_job(target, timeout=60)
        at.run()
    return at


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00garbage\x00\x81", "not UTF-8"),
    (b'path,label\n"red/000.png,red\n', "does not parse"),
    (b"file,label\nred/000.png,red\n", "needs a `path` column"),
])
def test_an_uploaded_csv_that_cannot_be_used_is_a_clear_message(tiny_image_folder, tmp_path, monkeypatch,
                                                                 content, message):
    monkeypatch.delenv("MLFIX_PROJECT", raising=False)
    at = _create_with_csv(app_on(None), tiny_image_folder, tmp_path / "p", content)
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert not Project.is_project(tmp_path / "p")


def test_an_uploaded_csv_labels_the_project(tiny_image_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFIX_PROJECT", raising=False)
    csv = "path,label\n" + "".join(f"red/{i:03d}.png,warm\n" for i in range(5)) + \
          "".join(f"blue/{i:03d}.png,cold\n" for i in range(3))
    at = _create_with_csv(app_on(None), tiny_image_folder, tmp_path / "p", csv.encode())
    assert not at.error, [e.value for e in at.error]
    project = Project.open(tmp_path / "p")
    assert project.labels == ["cold", "warm"] and len(project.samples) == 8
    assert (tmp_path / "p" / "uploads" / "labels.csv").read_text() == csv  # kept with the project
    (figure,) = plotly_figures(at)
    assert sorted(zip(values(figure.data[0].x), values(figure.data[0].y))) == [("cold", 3), ("warm", 5)]


def test_opening_a_folder_that_is_not_a_project_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFIX_PROJECT", raising=False)
    at = app_on(None)
    at.text_input(key="ds_open_dir").input(str(tmp_path))
    at.button[0].click().run()  # the form's submit button
    assert any("is not an mlfix project" in e.value for e in at.error)



# ------------------------------------------------------------------------------------ codebook


def test_codebook_page_shows_word_frequencies_patches_classes_and_an_overlay(demo_project):
    at = app_on(demo_project.dir, "app_pages/codebook.py")
    k = int(demo_project.settings.words)
    in_images = np.unpackbits(np.asarray(demo_project.bags()), axis=1, bitorder="little")[:, :k].sum(0).astype(int)
    frequency, classes = plotly_figures(at)[:2]
    assert sorted(values(frequency.data[0].y), reverse=True) == sorted(in_images.tolist(), reverse=True)
    assert {m.label: m.value for m in at.metric}["Words in use"] == str(int((in_images > 0).sum()))
    word = at.selectbox(key="cb_word").value
    # the first word shown is the most frequent one that is in at most half of the images
    ranked = sorted(range(k), key=lambda w: (-in_images[w], w))
    half = len(demo_project.samples) / 2
    assert word == next((w for w in ranked if 0 < in_images[w] <= half), ranked[0])
    patches, picture, overlay, focus = at.get("image")  # as the model sees it, its word grid, its weights
    assert len(patches.value) == min(48, int(in_images[word]))
    # the classes chart counts the images of each class that contain the word
    labels = demo_project.samples["label"].to_numpy()
    has = np.unpackbits(np.asarray(demo_project.bags()), axis=1, bitorder="little")[:, word].astype(bool)
    expected = pd.Series(labels[has]).value_counts()
    assert dict(zip(values(classes.data[0].y), values(classes.data[0].x))) == expected.to_dict()
    # the chosen image's words are listed with their cell counts
    sample_id = at.selectbox(key="cb_image").value
    grid = np.asarray(demo_project.word_grids()[demo_project.row_of(sample_id)])
    words = table(at, "word", "cells here")
    assert dict(zip(words["word"], words["cells here"])) == dict(zip(*np.unique(grid, return_counts=True)))
    # highlighting a word redraws the overlay without an error
    before = at.get("image")[2].value
    at.selectbox(key="cb_highlight").set_value(int(words["word"].iloc[0])).run()
    assert not at.exception and len(at.get("image")) == 4
    assert at.get("image")[2].value != before  # the overlay now shows that one word
    assert "combined order" in at.get("image")[3].proto.imgs[0].caption


def test_codebook_focus_weights_are_the_centre_prior_times_each_words_idf(demo_project):
    from mlfix.pipeline.ordering.weighted import centre_weights
    from mlfix.ui import loaders

    sample_id = str(demo_project.samples["sample_id"].iloc[3])
    png, weights = loaders.focus_overlay(demo_project, sample_id, display=96)
    grid = np.asarray(demo_project.word_grids()[3])
    ok = demo_project.readable()
    images_with = np.array([(np.asarray(demo_project.word_grids())[ok] == w).any(axis=(1, 2)).sum() for w in grid.ravel()])
    idf = np.log(ok.sum() / images_with).reshape(grid.shape)
    np.testing.assert_allclose(weights, centre_weights(*grid.shape) * idf, rtol=1e-5)
    assert png.startswith(b"\x89PNG")


def test_codebook_page_asks_for_an_index_first(project_with_problems):
    at = app_on(project_with_problems.dir, "app_pages/codebook.py")
    assert any("not indexed yet" in i.value for i in at.info)


# ------------------------------------------------------------------------------------ export


def test_export_page_downloads_the_corrected_labels_and_summarises_the_changes(project_copy, media):
    samples = project_copy.samples
    ids = samples["sample_id"].tolist()
    original = dict(zip(ids, samples["label"]))
    other = next(l for l in project_copy.labels if l != original[ids[0]])
    with ReviewStore.for_project(project_copy.dir) as store:
        store.decide(ids[:3], "relabel", other, reviewer="alice")
        store.decide(ids[3], "flag", reviewer="bob")
        store.decide(ids[4], "ok", reviewer="bob")
    at = app_on(project_copy.dir, "app_pages/export.py")
    metrics = {m.label: m.value for m in at.metric}
    changed = sum(original[i] != other for i in ids[:3])
    assert metrics == {"Samples": str(len(ids)), "Reviewed": "5", "Relabeled": str(changed),
                       "Flagged": "1", "Checked fine": "1"}
    csv = pd.read_csv(io.BytesIO(download(at, media, "CSV")), keep_default_na=False)
    assert len(csv) == len(ids)
    assert csv.set_index("sample_id").loc[ids[:3], "corrected_label"].tolist() == [other] * 3
    assert csv.set_index("sample_id").loc[ids[3], "status"] == "flagged"
    doc = json.loads(download(at, media, "JSON"))
    assert sum(s["changed"] for s in doc["samples"]) == changed
    assert doc["project"]["classes"] == project_copy.labels and doc["project"]["class_events"] == []
    coco = json.loads(download(at, media, "COCO"))  # not a COCO project: image-level labels, no boxes
    assert len(coco["images"]) == len(ids) and not any("bbox" in a for a in coco["annotations"])
    changes = table(at, "original_label", "count")
    assert changes["count"].sum() == changed and set(changes["corrected_label"]) == {other}
    reviewers = table(at, "reviewer", "relabel").set_index("reviewer")
    assert reviewers.loc["alice", "relabel"] == 3 and reviewers.loc["bob", "decisions"] == 2
    # a decision made elsewhere (a notebook, another tab) shows at the next rerun
    with ReviewStore.for_project(project_copy.dir) as store:
        store.decide(ids[5], "flag", reviewer="carol")
    at.run()
    assert {m.label: m.value for m in at.metric}["Flagged"] == "2"


def test_export_page_offers_coco_for_a_coco_project(tiny_image_folder, tmp_path, media):
    images = sorted(p.relative_to(tiny_image_folder).as_posix() for p in tiny_image_folder.rglob("*.png"))[:4]
    coco = {"images": [{"id": i, "file_name": name, "width": 48, "height": 48} for i, name in enumerate(images)],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 100 + i, "image_id": i, "bbox": [4, 4, 30, 30], "category_id": 1}
                            for i in range(len(images))]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    project = Project.create(tmp_path / "p", images=tiny_image_folder, coco=tmp_path / "coco.json")
    with ReviewStore.for_project(project.dir) as store:
        store.decide(project.samples["sample_id"].iloc[0], "relabel", "gadget", reviewer="alice")
    at = app_on(project.dir, "app_pages/export.py")
    out = json.loads(download(at, media, "COCO"))
    assert out["categories"][-1]["name"] == "gadget"
    assert [a["category_id"] for a in out["annotations"]] == [out["categories"][-1]["id"], 1, 1, 1]
