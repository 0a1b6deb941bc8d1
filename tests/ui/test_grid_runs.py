"""Runs in the review grid: breaks between runs, ``r`` selects the run around the focused image,
``[``/``]`` move between runs, click-drag selects a span, and one label key labels the whole
selection as one action.

The first test reads what the Review page gives the grid (AppTest): the run id of each image in a
similarity order, of one class or of all images, and none in a score order. The next (Debian
Chromium + Playwright) drives grid.js alone in a blank page (no server) and reads the actions the
grid sends. The last runs the app on a copy of the demo project: labelling a run with one key
stores one decision per image of the run, and after a reload the grid shows them. It prints the
time from the key press to the decisions being in the store (not asserted: it depends on the machine).
"""

from __future__ import annotations

import time

import pytest

from tests.ui.test_browser_review import app_url  # noqa: F401  (a fixture)
from tests.ui.test_browser_review import CHROMIUM, CHROMIUM_ARGS, OUTPUT, REPO, poll, review_page


PIXEL = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
RUNS = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]  # three runs of a page of ten


def test_the_page_gives_each_image_its_run_in_a_similarity_order(demo_project, tmp_path):
    import shutil

    from mlfix.project import Project
    from tests.ui.test_review_page import grid_data, run_page, selectbox

    project = Project.open(shutil.copytree(demo_project.dir, tmp_path / "project",
                                           ignore=shutil.ignore_patterns("thumbs", "reviews.db*", "progress")))
    at = run_page(project.dir)
    label = selectbox(at, "Class").value
    items = grid_data(at)["items"]
    assert [it["run"] for it in items] == project.runs(label)[:len(items)].tolist()
    selectbox(at, "Class").select("(all images)").run()
    items = grid_data(at)["items"]
    runs = project.runs(None)
    assert [it["id"] for it in items] == [str(s) for s in project.order(None)[:len(items)]]
    assert [it["run"] for it in items] == runs[:len(items)].tolist() and runs[len(items) - 1] > 0
    sort = selectbox(at, "Sort by")
    sort.select(next(o for o in sort.options if not o.startswith("Similarity"))).run()
    assert not any("run" in it for it in grid_data(at)["items"])  # a score order has no runs


def need_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian Chromium is not installed at /usr/bin/chromium (make browser installs it)")


def grid_page(p):
    """A blank page with grid.js and grid.css; ``window.render(data)`` mounts the grid and
    ``window.sent`` collects what it sends."""
    script = (REPO / "mlfix" / "ui" / "grid.js").read_text(encoding="utf-8")
    css = (REPO / "mlfix" / "ui" / "grid.css").read_text(encoding="utf-8")
    html = (f"<style>{css}</style><div id='host'></div>"
            "<script type='module'>import grid from './grid.js'; window.sent = [];"
            "window.render = (data) => grid({data, parentElement: document.getElementById('host'),"
            " setTriggerValue: (name, value) => window.sent.push(value), setStateValue: () => {}});</script>")
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 900, "height": 700})
    page.route("http://grid.test/", lambda route: route.fulfill(body=html, content_type="text/html"))
    page.route("http://grid.test/grid.js", lambda route: route.fulfill(body=script, content_type="text/javascript"))
    page.goto("http://grid.test/")
    page.wait_for_function("() => typeof window.render === 'function'")
    return browser, page


def grid_data(runs: list[int] | None) -> dict:
    items = [{"id": f"s{i}", "url": PIXEL, "label": None, "status": "unreviewed", "new_label": None}
             for i in range(len(RUNS))]
    for item, run in zip(items, runs or ()):
        item["run"] = run
    return {"view": "v", "items": items, "palette": [{"label": "cat", "key": "1", "color": "#f00"},
                                                     {"label": "dog", "key": "2", "color": "#00f"}],
            "counter": {"reviewed": 0, "total": len(items), "title": "all"}, "page": {"index": 0, "count": 1},
            "acks": {}, "errors": [], "show_labels": False, "show_suggested": False, "batches": 0, "panel": None}


def selected(page) -> list[str]:
    return page.locator(".tile.selected img").evaluate_all("imgs => imgs.map((i) => i.alt)")


def focused(page) -> str:
    return page.locator(".tile.focus img").get_attribute("alt")


def decisions_sent(page) -> list[dict]:
    """The distinct actions the grid sent (a batch repeats the unacknowledged ones)."""
    actions = {}
    for batch in page.evaluate("window.sent"):
        for action in batch["actions"]:
            actions[action["seq"]] = action
    return [actions[seq] for seq in sorted(actions)]


@pytest.mark.browser
@pytest.mark.slow
def test_runs_show_as_breaks_and_r_selects_and_labels_a_run_as_one_action():
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = grid_page(p)
        page.evaluate("data => window.render(data)", grid_data(RUNS))
        tiles = page.locator(".tile")
        # a break before the first image of every run but the first
        starts = [i for i in range(tiles.count()) if "runstart" in tiles.nth(i).get_attribute("class")]
        assert starts == [3, 7]
        assert page.locator(".runhelp").is_visible()
        assert tiles.nth(3).evaluate("t => getComputedStyle(t).boxShadow") != "none"
        assert tiles.nth(4).evaluate("t => getComputedStyle(t).boxShadow") == "none"

        page.locator(".wrap").focus()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("r")  # the run around s1: s0..s2
        assert selected(page) == ["s0", "s1", "s2"]
        page.keyboard.press("2")  # one key labels the run: one action with its three ids
        assert [(a["kind"], a["ids"], a.get("label")) for a in decisions_sent(page)] == [
            ("relabel", ["s0", "s1", "s2"], "dog")]
        assert selected(page) == [] and focused(page) == "s3"  # on to the next run's first image

        page.keyboard.press("Shift+R")  # shift+r adds the run to the selection
        page.keyboard.press("]")
        assert focused(page) == "s7"
        page.keyboard.press("Shift+R")
        assert selected(page) == ["s3", "s4", "s5", "s6", "s7", "s8", "s9"]
        page.keyboard.press("Escape")
        page.keyboard.press("[")
        assert focused(page) == "s3"
        page.keyboard.press("[")
        assert focused(page) == "s0"

        # click-drag selects the span between the tiles where the button went down and up
        box = [tiles.nth(i).bounding_box() for i in (4, 6)]
        page.mouse.move(box[0]["x"] + 10, box[0]["y"] + 10)
        page.mouse.down()
        page.mouse.move(box[1]["x"] + 10, box[1]["y"] + 10, steps=5)
        page.mouse.up()
        assert selected(page) == ["s4", "s5", "s6"] and focused(page) == "s6"
        page.keyboard.press("1")
        assert decisions_sent(page)[-1]["ids"] == ["s4", "s5", "s6"]
        assert len(decisions_sent(page)) == 2

        # shift+arrow extends a span as before; a click after a drag still toggles one tile
        page.keyboard.press("Shift+ArrowLeft")
        page.keyboard.press("Shift+ArrowLeft")
        assert selected(page) == ["s5", "s6", "s7"]
        page.keyboard.press("Escape")
        tiles.nth(9).click()
        assert selected(page) == ["s9"]

        # without runs (a score sort, a view): no breaks, no run help, r says why
        page.evaluate("data => window.render(data)", {**grid_data(None), "view": "w"})
        assert page.locator(".tile.runstart").count() == 0
        assert not page.locator(".runhelp").is_visible()
        page.locator(".wrap").focus()
        page.keyboard.press("r")
        assert page.locator(".tile.selected").count() == 0
        assert "No runs here" in page.locator(".message").inner_text()
        browser.close()


@pytest.mark.browser
@pytest.mark.slow
def test_labelling_a_run_with_one_key_stores_one_decision_per_image_and_survives_a_reload(app_url):
    from mlfix.project import Project
    from mlfix.review.store import ReviewStore

    url, project_dir = app_url  # the app on a copy of the demo project
    project = Project.open(project_dir)
    store = ReviewStore.for_project(project_dir)
    with review_page(url) as page:
        current_class = page.locator(".ctitle").inner_text().split(": ", 1)[1]
        # the grid's runs are the project's: the first run of the class's similarity order
        runs, order = project.runs(current_class), project.order(current_class)
        first_run = [str(s) for s in order[runs == 0]]
        assert len(first_run) >= 3
        shown = page.locator(".tile img").evaluate_all("imgs => imgs.map((i) => i.alt)")
        breaks = page.locator(".tile").evaluate_all("ts => ts.map((t) => t.classList.contains('runstart'))")
        assert shown[:len(first_run)] == first_run
        expected_breaks = [i > 0 and runs[i] != runs[i - 1] for i in range(len(shown))]
        assert breaks == expected_breaks
        target, key = next((c.get_attribute("data-label"), c.locator("kbd").inner_text())
                           for c in page.locator(".chip").all() if c.get_attribute("data-label") != current_class)

        page.locator(".wrap").focus()
        page.keyboard.press("r")
        assert page.locator(".tile.selected").count() == len(first_run)
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "grid-runs-selected.png"))
        pressed = time.perf_counter()
        page.keyboard.press(key)
        poll(lambda: len(store.decisions()) >= len(first_run), timeout=20, every=0.01)
        latency = time.perf_counter() - pressed
        stored = store.decisions()
        print(f"key to stored decisions ({len(first_run)} images, one action): {latency * 1000:.0f} ms")
        assert sorted(stored["sample_id"]) == sorted(first_run)  # one decision per image, exactly once
        assert set(stored["kind"]) == {"relabel"} and set(stored["label"]) == {target}
        assert stored["client_id"].is_unique and stored["client_id"].str.split(":").str[0].nunique() == 1

        badges = page.locator(".tile[data-status='relabeled'] .badge")
        poll(lambda: badges.count() == len(first_run) and not page.locator(".tile.pending").count(), timeout=15)
        page.reload()
        page.locator(".tile").first.wait_for(timeout=60_000)
        poll(lambda: badges.count() == len(first_run), timeout=30)
        relabeled = page.locator(".tile[data-status='relabeled'] img").evaluate_all("imgs => imgs.map((i) => i.alt)")
        assert sorted(relabeled) == sorted(first_run)
        assert set(badges.all_inner_texts()) == {f"→ {target}"}
        assert len(store.decisions()) == len(first_run)  # the reload delivered nothing twice

        # "(all images)": the runs of the order across classes (heavily mislabeled data)
        box = page.locator("[data-testid=stSelectbox]").filter(has_text="Class").locator("input").first
        box.click()
        page.keyboard.type("(all images)")
        page.keyboard.press("Enter")
        poll(lambda: page.locator(".ctitle").inner_text().endswith("(all images)"), timeout=30)
        all_runs, all_order = project.runs(None), project.order(None)
        page_size = page.locator(".tile").count()
        poll(lambda: page.locator(".tile img").first.get_attribute("alt") == all_order[0], timeout=30)
        breaks = page.locator(".tile").evaluate_all("ts => ts.map((t) => t.classList.contains('runstart'))")
        assert breaks == [i > 0 and all_runs[i] != all_runs[i - 1] for i in range(page_size)]
        assert any(breaks)
        bar = page.locator(".tile.runstart").first.evaluate("t => getComputedStyle(t).boxShadow")
        assert bar != "none"  # the grid's own styles draw the break
        poll(lambda: page.locator(".tile img").first.evaluate("img => img.complete && img.naturalWidth > 0"))
        page.screenshot(path=str(OUTPUT / "grid-runs-all-images.png"))
    store.close()


@pytest.mark.browser
@pytest.mark.slow
def test_a_stretch_from_the_focused_image_costs_a_shift_click_and_a_key():
    """The presses bench/label_effort.py's ``spans`` reviewer is charged: after a decision the focus is
    on the next image, a shift-click selects from it to the tile clicked, a click takes one image back
    out, and one class key labels the rest as one action."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = grid_page(p)
        page.evaluate("data => window.render(data)", grid_data(RUNS))
        tiles = page.locator(".tile")
        page.locator(".wrap").focus()
        page.keyboard.press("1")  # the focused image alone: one press, and the focus moves on
        assert decisions_sent(page)[-1]["ids"] == ["s0"] and focused(page) == "s1"
        tiles.nth(5).click(modifiers=["Shift"])  # press 1: s1..s5, across a run break
        assert selected(page) == ["s1", "s2", "s3", "s4", "s5"]
        tiles.nth(3).click()  # one image already right: clicked out of the selection
        assert selected(page) == ["s1", "s2", "s4", "s5"]
        page.keyboard.press("2")  # press 2 (3 with the click out)
        assert [(a["ids"], a.get("label")) for a in decisions_sent(page)][-1] == (["s1", "s2", "s4", "s5"], "dog")
        assert selected(page) == [] and focused(page) == "s6"
        tiles.nth(8).click(modifiers=["Shift"])  # the next stretch starts at the focus again
        assert selected(page) == ["s6", "s7", "s8"]
        browser.close()
