"""The grid alone in Chromium (grid.js in a blank page, no server): what guards unsent decisions (#15).

- every action carries the reviewer tag the grid was rendered with (``by``), so a batch queued before
  a restart is never stored under whoever signs in next in that tab;
- closing or reloading the tab while decisions are unacknowledged asks first (``beforeunload``);
  once Python acknowledges them, or when only page turns are pending, it does not. (The handler is
  checked with a dispatched event: this headless Chromium shows no beforeunload dialog even for a
  minimal page, so the dialog itself cannot be observed here.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HTML = ("<div id='host'></div><script type='module'>import grid from './grid.js';"
        "window.sent = [];"
        "window.render = (data) => grid({data, parentElement: document.getElementById('host'),"
        " setTriggerValue: (name, value) => window.sent.push(value), setStateValue: () => {}});</script>")
PIXEL = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
UNLOAD = """() => { const e = new Event('beforeunload', {cancelable: true});
                    window.dispatchEvent(e); return e.defaultPrevented; }"""


def grid_data(acks: dict, tag: str = "tag-of-ann", count: int = 2) -> dict:
    items = [{"id": f"{i}.png", "url": PIXEL, "label": "cat", "status": "unreviewed", "new_label": None}
             for i in range(3)]
    return {"view": "v", "items": items, "palette": [{"label": "cat", "key": "1", "color": "#f00"}],
            "counter": {"reviewed": 0, "total": 3, "title": "cat"}, "page": {"index": 0, "count": count},
            "acks": acks, "errors": [], "show_labels": False, "show_suggested": False, "batches": 0,
            "panel": None, "reviewer_tag": tag}


@pytest.fixture
def page():
    if not CHROMIUM.exists():
        pytest.skip("Debian Chromium is not installed at /usr/bin/chromium (make browser installs it)")
    from playwright.sync_api import sync_playwright

    script = (REPO / "mlfix" / "ui" / "grid.js").read_text(encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page()
        tab.route("http://grid.test/", lambda route: route.fulfill(body=HTML, content_type="text/html"))
        tab.route("http://grid.test/grid.js", lambda route: route.fulfill(body=script, content_type="text/javascript"))
        tab.goto("http://grid.test/")
        tab.wait_for_function("() => typeof window.render === 'function'")
        tab.evaluate("data => window.render(data)", grid_data({}))
        yield tab
        browser.close()


def test_actions_carry_the_reviewer_tag_and_leaving_with_unsent_decisions_asks_first(page):
    assert page.evaluate(UNLOAD) is False  # nothing made yet
    page.keyboard.press("o")
    [batch] = page.evaluate("() => window.sent")
    [action] = batch["actions"]
    assert (action["kind"], action["ids"], action["by"]) == ("ok", ["0.png"], "tag-of-ann")
    assert page.evaluate(UNLOAD) is True  # the decision is not acknowledged: the browser asks
    page.evaluate("data => window.render(data)", grid_data({batch["session"]: action["seq"]}))
    assert page.evaluate(UNLOAD) is False  # acknowledged: leave freely
    page.keyboard.press("n")  # a page turn only: nothing would be lost
    assert page.evaluate("() => window.sent.at(-1).actions.map(a => a.kind)") == ["page"]
    assert page.evaluate(UNLOAD) is False


def test_a_tag_given_later_is_stamped_on_later_actions_only(page):
    page.keyboard.press("o")
    page.evaluate("data => window.render(data)", grid_data({}, tag="tag-of-bob"))
    page.keyboard.press("o")
    sent = page.evaluate("() => window.sent.at(-1).actions.map(a => a.by)")
    assert sent == ["tag-of-ann", "tag-of-bob"]  # the first stays ann's: Python refuses it for bob
