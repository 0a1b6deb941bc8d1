"""Deep links and reloads in a real browser (Debian Chromium + Playwright): what AppTest cannot do.

- ``/dataset``, the first page of an admin, answers at its own URL (Streamlit serves its default page
  at ``/`` only, and said "Page not found" here).
- ``/training?project=DIR`` opens DIR, not the server's ``--project``; the project stays in the URL
  when the menu changes page, and a reload keeps it.
- In a team session, a page the identity may not open says why at its URL, before and after signing in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlfix.project import Project
from mlfix.service.server import running_app
from tests.ui.test_browser_pages import CHROMIUM, settle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REVIEWER = "reviewer-token-0123456789"


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian Chromium is not installed at /usr/bin/chromium (make browser installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM),
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield chromium.new_page(viewport={"width": 1280, "height": 800})
        finally:
            chromium.close()


def serve(project: Project, tmp_path: Path, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFIX_")}
    log = open(tmp_path / "streamlit.log", "w")
    return log, running_app(project.dir, env={**clean, **env}, log=log)


def test_deep_links_and_reloads_keep_the_page_and_the_project(two_projects, browser, tmp_path):
    alpha, beta = two_projects
    page = browser
    log, app = serve(alpha, tmp_path)
    with log, app as url:
        page.goto(f"{url}/dataset")  # the server's very first request
        page.get_by_role("heading", name="Dataset", exact=True).first.wait_for(timeout=90_000)
        settle(page)
        assert page.get_by_text("Page not found").count() == 0
        assert page.url == f"{url}/dataset"

        page.goto(f"{url}/training?project={beta.dir}")
        page.get_by_role("heading", name="Training", exact=True).first.wait_for(timeout=60_000)
        settle(page)
        sidebar = page.locator("[data-testid='stSidebar']")
        assert sidebar.get_by_text("12 samples").count() == 1, "not the project of the URL"
        sidebar.get_by_role("link", name="Codebook").click()
        page.get_by_role("heading", name="Codebook", exact=True).first.wait_for(timeout=60_000)
        settle(page)
        assert "/codebook?project=" in page.url and page.url.endswith(str(beta.dir).replace("/", "%2F"))
        page.reload()
        page.get_by_role("heading", name="Codebook", exact=True).first.wait_for(timeout=60_000)
        settle(page)
        assert sidebar.get_by_text("12 samples").count() == 1, "a reload went back to the server's project"
        assert page.locator("[data-testid='stException']").count() == 0


def test_a_page_the_identity_may_not_open_says_why(two_projects, browser, tmp_path):
    alpha, _ = two_projects
    page = browser
    log, app = serve(alpha, tmp_path, MLFIX_ADMIN_TOKEN="admin-token-0123456789", MLFIX_REVIEWER_TOKEN=REVIEWER)
    with log, app as url:
        page.goto(f"{url}/export")
        page.get_by_text("Sign in in the sidebar to open the Export page").wait_for(timeout=90_000)
        assert page.get_by_text("Page not found").count() == 0
        sidebar = page.locator("[data-testid='stSidebar']")
        sidebar.get_by_role("textbox", name="Your name").fill("bob")
        sidebar.get_by_role("textbox", name="Access token").fill(REVIEWER)
        sidebar.get_by_role("button", name="Sign in").click()
        page.get_by_text("You may not open the Export page").wait_for(timeout=60_000)
        settle(page)
        assert "bob is a reviewer: only an admin may export labels" in page.inner_text("body")
        assert page.get_by_text("Page not found").count() == 0
        assert sidebar.get_by_role("link", name="Review").count() == 1
