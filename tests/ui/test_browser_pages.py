"""The Dataset, Training, Codebook and Export pages in a real browser (Debian Chromium + Playwright).

What AppTest cannot show: a fresh server answering a deep link (``/training`` as its very first
request) still runs the page inside ``app.py``'s shell (navigation, sidebar), and every page draws
without an exception. Screenshots (1280x800, plus a tall one per page) go to ``test-output/pages/``
(git-ignored) for a human to look at.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from mlfix.service.server import running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = REPO / "test-output" / "pages"
PAGES = {"training": "Training", "dataset": "Dataset", "codebook": "Codebook", "export": "Export"}


@pytest.fixture
def server(demo_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(demo_project.dir, project, ignore=shutil.ignore_patterns("reviews.db*", "jobs", "thumbs"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFIX_")}
    with open(tmp_path / "streamlit.log", "w") as log, running_app(project, env=env, log=log) as url:
        yield url


def settle(page, timeout_s: float = 60) -> None:
    """Wait until the script run is over and no skeleton placeholders are left."""
    page.wait_for_timeout(500)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = page.locator("[data-testid='stStatusWidget'], [data-testid='stSkeleton']").count()
        if not busy:
            break
        page.wait_for_timeout(250)
    page.wait_for_timeout(500)


def test_every_page_draws_inside_the_shell_even_from_a_deep_link(server):
    if not CHROMIUM.exists():
        pytest.skip("Debian Chromium is not installed at /usr/bin/chromium (make browser installs it)")
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox",
                                                                          "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            for name, title in PAGES.items():  # /training first: the server's very first request
                page.goto(f"{server}/{name}")
                page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=90_000)
                settle(page)
                sidebar = page.locator("[data-testid='stSidebar']")
                assert sidebar.get_by_text("Project folder").count() == 1, f"{name}: no shared sidebar"
                assert sidebar.get_by_role("link", name="Review").count() == 1, f"{name}: no navigation"
                assert page.locator("[data-testid='stException']").count() == 0, f"{name}: a traceback"
                page.screenshot(path=str(OUTPUT / f"{name}.png"))
                page.set_viewport_size({"width": 1280, "height": 2400})
                settle(page)
                page.screenshot(path=str(OUTPUT / f"{name}-tall.png"))
                page.set_viewport_size({"width": 1280, "height": 800})
        finally:
            browser.close()
