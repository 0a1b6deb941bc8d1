"""The project in the URL (``?project=DIR``), who may choose it, and the Dataset page's job note (AppTest).

What needs a real browser (a reload, a deep link as the first request, the menu clearing the URL's
query on a page change) is in ``test_browser_url.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mlfix.project import Project
from mlfix.service import jobs
from mlfix.ui import access
from mlfix.ui import state as ui_state
from mlfix.ui import sidebar

APP = str(Path(__file__).resolve().parents[2] / "app.py")
ADMIN, REVIEWER = "admin-token-0123456789", "reviewer-token-0123456789"


@pytest.fixture
def open_mode(monkeypatch):
    for name in ("MLFIX_ADMIN_TOKEN", "MLFIX_REVIEWER_TOKEN", "MLFIX_PROJECT", "MLFIX_DB_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tokens(monkeypatch):
    monkeypatch.setenv("MLFIX_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("MLFIX_REVIEWER_TOKEN", REVIEWER)
    monkeypatch.delenv("MLFIX_DB_URL", raising=False)


def summary(at: AppTest) -> str:
    return " ".join(c.value for c in at.sidebar.caption)


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_project_picked_in_the_sidebar_goes_into_the_url(two_projects, open_mode):
    alpha, beta = two_projects
    at = run(AppTest.from_file(APP, default_timeout=120))
    assert "project" not in at.query_params
    at.sidebar.text_input(key=sidebar.INPUT_KEY).input(str(beta.dir))
    run(at)
    assert at.query_params["project"] == str(beta.dir)
    assert "**beta** · 12 samples" in summary(at)
    at.switch_page("app_pages/training.py")
    at.query_params.clear()  # what the browser does on a page change
    run(at)
    assert at.query_params["project"] == str(beta.dir)  # back in the URL, same project
    assert "**beta**" in summary(at)


def test_a_fresh_session_opens_the_project_of_its_url(two_projects, open_mode, monkeypatch):
    alpha, beta = two_projects
    monkeypatch.setenv("MLFIX_PROJECT", str(alpha.dir))
    monkeypatch.setattr(sys, "argv", ["app.py", "--project", str(alpha.dir)])
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["project"] = str(beta.dir)  # a reload, or a link someone shared
    run(at)
    assert "**beta** · 12 samples" in summary(at)  # not the server's --project
    assert at.session_state[ui_state.PROJECT_KEY] == str(beta.dir.resolve())
    assert [t.value for t in at.title] == ["Dataset"]


def test_the_session_choice_wins_over_the_url_and_the_url_over_the_server(two_projects, open_mode,
                                                                        monkeypatch):
    alpha, beta = two_projects
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[ui_state.PROJECT_KEY] = str(alpha.dir)
    at.query_params["project"] = str(beta.dir)
    run(at)
    assert "**alpha**" in summary(at) and at.query_params["project"] == str(alpha.dir)
    probe = AppTest.from_string("import streamlit as st\nfrom mlfix.ui import state\n"
                                "st.write(str(state.project_dir()))", default_timeout=120)
    monkeypatch.setenv("MLFIX_PROJECT", "/from/env")
    probe.query_params["project"] = "/from/url"
    assert run(probe).markdown[0].value == "/from/url"
    monkeypatch.setattr(sys, "argv", ["app.py", "--project", "/from/argv"])
    probe.query_params.clear()
    assert run(probe).markdown[0].value == "/from/argv"


def sign_in(at: AppTest, name: str, token: str) -> AppTest:
    run(at)
    at.sidebar.text_input(key=access.NAME_KEY).input(name)
    at.sidebar.text_input(key=access.TOKEN_KEY).input(token)
    at.sidebar.button[0].click()
    return run(at)


def test_a_reviewer_cannot_open_another_folder_by_the_url(two_projects, tokens, monkeypatch):
    alpha, beta = two_projects
    monkeypatch.setenv("MLFIX_PROJECT", str(alpha.dir))  # the server's project
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["project"] = str(beta.dir)
    sign_in(at, "bob", REVIEWER)
    assert "**alpha** · 8 samples" in summary(at) and "beta" not in summary(at)
    assert ui_state.PROJECT_KEY not in at.session_state
    [warning] = [w.value for w in at.sidebar.warning]
    assert "only an admin may choose the project" in warning and str(beta.dir) not in warning
    assert not [t for t in at.sidebar.text_input]  # no picker either


def test_an_admin_opens_the_folder_of_the_url_after_signing_in(two_projects, tokens, monkeypatch):
    alpha, beta = two_projects
    monkeypatch.setenv("MLFIX_PROJECT", str(alpha.dir))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["project"] = str(beta.dir)
    run(at)
    assert ui_state.PROJECT_KEY not in at.session_state  # nothing is read before signing in
    sign_in(at, "ann", ADMIN)
    assert "**beta** · 12 samples" in summary(at) and not at.sidebar.warning
    assert at.query_params["project"] == str(beta.dir)


def test_the_dataset_page_names_a_running_job_with_the_right_article(open_mode, tmp_path):
    from tests.conftest import write_image_folder

    project = Project.create(tmp_path / "p", write_image_folder(tmp_path / "images", per_class=2))
    jobs.start_job(project.dir, "index", command=[sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state[ui_state.PROJECT_KEY] = str(project.dir)
        run(at)
        assert any(i.value.startswith("An index job is running") for i in at.info), [i.value for i in at.info]
    finally:
        jobs.stop_job(project.dir, force=True)
