"""The hostile project of test_rendered_text.py in a real browser: no page renders a link, image,
handler or script that came from the data (the DOM, shadow roots included)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.security.test_rendered_text import hostile_project  # noqa: F401 (a fixture)

CHROMIUM = Path("/usr/bin/chromium")
# Links, images, handlers and scripts that came from the data, anywhere in the page (shadow roots too).
DOM_CHECK = """() => {
  const bad = [], roots = [document];
  for (let i = 0; i < roots.length; i++) {
    for (const e of roots[i].querySelectorAll('*')) {
      if (e.shadowRoot) roots.push(e.shadowRoot);
      const link = e.getAttribute('href') || e.getAttribute('xlink:href') || '';
      const src = e.getAttribute('src') || '';
      if (/evil|javascript:/i.test(link)) bad.push(e.tagName + ' href=' + link);
      if (/evil/i.test(src)) bad.push(e.tagName + ' src=' + src);
      for (const on of ['onerror', 'onload', 'onclick']) if (e.hasAttribute(on)) bad.push(e.tagName + ' ' + on);
      if (e.tagName === 'SCRIPT' && /alert/.test(e.textContent)) bad.push('script ' + e.textContent);
    }
  }
  return bad;
}"""


# The text of the page, the grid's shadow root included.
ALL_TEXT = """() => {
  const roots = [document], parts = [];
  for (let i = 0; i < roots.length; i++) {
    for (const e of roots[i].querySelectorAll('*')) {
      if (e.shadowRoot) roots.push(e.shadowRoot);
      if (e.title) parts.push(e.title);
    }
    parts.push(roots[i] === document ? document.body.innerText : roots[i].textContent);
  }
  return parts.join('\\n');
}"""


@pytest.mark.browser
@pytest.mark.slow
def test_no_page_renders_a_hostile_link_image_or_script_in_chromium(hostile_project, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian Chromium is not installed at /usr/bin/chromium (make browser installs it)")
    from playwright.sync_api import sync_playwright

    from mlfix.service.server import running_app

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFIX_")}
    dialogs: list[str] = []
    with open(tmp_path / "streamlit.log", "w") as log, running_app(hostile_project.dir, env=env, log=log) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            for name, ready in (("dataset", "Examples per class"), ("codebook", "One image: its word grid"),
                                ("review", "Sort by"), ("export", "Decisions per reviewer")):
                page.goto(f"{url}/{name}")
                page.locator(f"text={ready} >> visible=true").first.wait_for(timeout=90_000)
                page.wait_for_timeout(3000)  # charts and the grid draw after the script run
                assert page.evaluate(DOM_CHECK) == [], name
                shown = page.evaluate(ALL_TEXT)
                assert "evil.example" in shown and "\u202e" not in shown, name  # the data is there, as text
        finally:
            browser.close()
    assert dialogs == []
