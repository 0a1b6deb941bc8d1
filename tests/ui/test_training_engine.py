"""The Training page's engine choice: the select and the Ray address reach the background job's
``mlfix index`` argv (one argument each, never a shell); a refused address starts nothing.

No job really indexes: ``jobs.mlfix_command`` is wrapped so the real command line is recorded and a
harmless one runs instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mlfix.project import Project
from mlfix.service import jobs
from mlfix.ui import state as ui_state
from tests.conftest import write_image_folder

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGE = "app_pages/training.py"


@pytest.fixture
def project(tmp_path) -> Project:
    return Project.create(tmp_path / "p", write_image_folder(tmp_path / "images", per_class=2))


@pytest.fixture
def commands(monkeypatch) -> list[list[str]]:
    """The command lines the page asked for (each ran as a harmless ``print``)."""
    real, asked = jobs.mlfix_command, []

    def recorded(project_dir, kind, args=()):
        asked.append(real(project_dir, kind, args))
        return [sys.executable, "-c", "print('pretend')"]

    monkeypatch.setattr(jobs, "mlfix_command", recorded)
    return asked


def training_page(project: Project) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
    at.run()
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_choosing_ray_puts_the_engine_and_address_on_the_job_command_line(project, commands):
    at = training_page(project)
    assert at.selectbox(key="ix_engine").value == "local"
    assert not [t for t in at.text_input if t.key == "ix_ray_address"]  # the address only for Ray
    at.selectbox(key="ix_engine").set_value("ray").run()
    at.text_input(key="ix_ray_address").input("ray://head:10001").run()
    at.button(key="ix_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert jobs.wait_job(project.dir, timeout=60).state == "finished"
    (command,) = commands
    assert command[3:6] == ["index", "--project", str(project.dir.resolve())]
    assert command[6:] == ["--engine", "ray", "--ray-address=ray://head:10001"]


def test_the_project_engine_is_not_repeated_and_local_is_asked_for_by_name(project, commands):
    from mlfix.settings import read_config, write_config

    source, settings = read_config(project.dir)  # as `mlfix index --engine ray --ray-address auto` leaves it
    write_config(project.dir, source, settings.replace(engine="ray", ray_address="auto"))
    at = training_page(project)
    assert any("engine **ray at auto**" in m.value for m in at.markdown)
    assert at.text_input(key="ix_ray_address").value == "auto"
    at.button(key="ix_start").click().run()
    jobs.wait_job(project.dir, timeout=60)
    at.selectbox(key="ix_engine").set_value("local").run()
    at.button(key="ix_start").click().run()
    jobs.wait_job(project.dir, timeout=60)
    assert [command[6:] for command in commands] == [[], ["--engine", "local"]]


def test_a_refused_address_says_why_and_starts_nothing(project, commands):
    at = training_page(project)
    at.selectbox(key="ix_engine").set_value("ray").run()
    at.text_input(key="ix_ray_address").input("auto; rm -rf ~").run()
    assert any("address must be" in e.value for e in at.error)  # (Markdown-escaped: ray\\_address)
    assert at.button(key="ix_start").disabled
    assert commands == [] and jobs.current_job(project.dir) is None


def test_the_last_features_pass_is_named(project):
    (project.dir / "features").mkdir(exist_ok=True)
    (project.dir / "features" / "engine.json").write_text(json.dumps(
        {"engine": "ray", "address": "auto", "actors": 2, "gpus": 0, "images": 8, "seconds": 1.26}))
    at = training_page(project)
    assert "Last features pass: ray at auto, 2 actors, 0 GPUs, 8 images in 1.3 s." in [c.value for c in at.caption]
