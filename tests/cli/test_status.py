"""``mlfix status``: what is indexed and with which settings, scores and their freshness, reviews, jobs."""

from __future__ import annotations

import shutil
import sys

import pytest

from mlfix.cli import main
from mlfix.project import Project
from tests.conftest import FAST_SETTINGS


@pytest.fixture
def demo_copy(demo_project, tmp_path):
    """A private copy of the indexed demo (these tests add decisions and jobs)."""
    return Project.open(shutil.copytree(demo_project.dir, tmp_path / "demo"))


def status_of(project, capsys) -> str:
    assert main(["status", "--project", str(project.dir)]) == 0
    return capsys.readouterr().out


def test_status_of_an_indexed_project_names_its_settings_counts_and_classes(demo_copy, capsys):
    (demo_copy.dir / "scores.parquet").unlink(missing_ok=True)
    out = status_of(demo_copy, capsys)
    assert f"project   {demo_copy.dir}" in out
    assert "samples   200 (200 readable)" in out
    assert "problems  0 files skipped" in out
    assert "classes   10: eight" in out
    assert (f"with backbone resnet18, weights random, image size {FAST_SETTINGS['image_size']} px, "
            f"{FAST_SETTINGS['words']} words, tta_flip off") in out
    assert "scores    none yet: run `mlfix scores" in out
    assert "decisions none yet" in out and "job       none running" in out


def test_status_follows_scores_decisions_and_a_running_job(demo_copy, capsys):
    from mlfix.service.jobs import start_job, stop_job, wait_job

    demo_copy.scores()
    assert "scores    computed" in status_of(demo_copy, capsys) and "up to date" in status_of(demo_copy, capsys)
    ids = demo_copy.samples["sample_id"].tolist()
    demo_copy.reviews.decide(ids[:2], "relabel", "one", reviewer="alice")
    demo_copy.reviews.decide(ids[2], "ok", reviewer="bob")
    demo_copy.reviews.undo(ids[2], reviewer="bob")
    out = status_of(demo_copy, capsys)
    assert "older than the latest decisions: `mlfix scores` recomputes them" in out
    assert "decisions 4 (relabel 2, " in out and "ok 1" in out and "undo 1" in out
    assert "by 2 reviewers: alice 2, bob 2" in out
    start_job(demo_copy.dir, "index", command=[sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert "an index job is running since" in status_of(demo_copy, capsys)
    finally:
        stop_job(demo_copy.dir)
        wait_job(demo_copy.dir)
    assert "the last one (index" in status_of(demo_copy, capsys)


def test_status_says_when_the_settings_changed_since_the_index(demo_copy, capsys):
    from mlfix.settings import write_config

    write_config(demo_copy.dir, demo_copy.source, demo_copy.settings.replace(words=64))
    out = status_of(Project.open(demo_copy.dir), capsys)
    assert "mlfix.toml now asks for words 64: run `mlfix index" in out


def test_status_of_a_project_not_indexed_yet_says_what_to_run(tiny_image_folder, tmp_path, capsys):
    project = Project.create(tmp_path / "p", images=tiny_image_folder, **FAST_SETTINGS)
    out = status_of(project, capsys)
    assert "samples   40 (40 readable)" in out and "classes   4: blue 10, green 10, red 10, yellow 10" in out
    assert f"index     not built yet: run `mlfix index --project {project.dir}`" in out
    assert "scores    none yet: index first" in out


def test_status_of_a_folder_that_is_not_a_project(tmp_path, capsys):
    assert main(["status", "--project", str(tmp_path)]) == 2
    assert "not an mlfix project" in capsys.readouterr().err


def test_status_shows_escape_sequences_in_labels_instead_of_sending_them_to_the_terminal(
        tiny_image_folder, tmp_path, capsys):
    # a labels CSV is data: a label that carries an escape sequence would recolour or rewrite the
    # user's terminal; status prints it as [U+001B]
    paths = sorted(p.relative_to(tiny_image_folder).as_posix() for p in tiny_image_folder.rglob("*.png"))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{'cat' if i % 2 else 'dog' + chr(27) + '[2J'}\n"
                                                   for i, p in enumerate(paths)))
    project = Project.create(tmp_path / "p", images=tiny_image_folder, labels=labels, **FAST_SETTINGS)
    out = status_of(project, capsys)
    assert "\x1b" not in out
    assert "dog[U+001B][2J 20" in out
    assert f"`mlfix serve --project {project.dir}`" in out
