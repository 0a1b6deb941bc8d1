"""How fast the Review page answers with 200 thumbnails on the page (goal: under 1 s after warm-up).

    python -m bench.review_page [--quick] [--project DIR] [--no-browser]

Figures (median and p90 over repeated runs, after warm-up):
- ``apptest_rerun_after_decision_s``: one script run of the Review page (AppTest) after a decision
  was stored: the store is re-read, badges and counter recomputed, the 200 items resent.
- ``apptest_page_flip_s``: one script run that shows the other page of 200 (thumbnails cached).
- ``grid_payload_kb``: size of the data the page sends the grid (thumbnails travel by URL).
- in a real browser (Debian Chromium, when installed), against ``streamlit run app.py``:
  ``browser_key_to_stored_s`` (press ``o``: the decision is stored and the grid has the server's
  answer) and ``browser_page_flip_s`` (press ``n``: the next 200 tiles are in the page, and
  ``browser_page_flip_images_s``: their thumbnails are decoded).

- ``large_*``: the page on a synthetic project of ``--large`` samples (1,000,000; 20,000 with
  ``--quick``) in 10 classes: the first run (opening the project, 200 thumbnails) and a rerun after
  a decision.

Without ``--project`` it builds the demo (sklearn digits; 300 of them with ``--quick``) with fast
index settings in a temporary folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mlfix.service.server import running_app
from bench.common import emit, parser

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "app_pages" / "review.py")
CHROMIUM = Path("/usr/bin/chromium")
FAST = {"backbone": "resnet18", "weights": "random", "image_size": 64, "words": 64, "batch_size": 64}


def stats(values: list[float]) -> tuple[float, float]:
    return float(np.median(values)), float(np.percentile(values, 90))


def build_project(folder: Path, limit: int | None):
    from mlfix.demo import build_demo

    return build_demo(folder, limit=limit, **FAST)


def bench_apptest(project, repeats: int) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["mlfix_project_dir"] = str(project.dir)
    at.session_state["mlfix_reviewer"] = "bench"
    at.session_state["mlfix_review_class"] = "(all images)"
    at.session_state["mlfix_review_size"] = 200
    at.run()
    for _ in range(2):  # warm-up: thumbnails of both pages made, caches filled
        next(b for b in at.button if b.label == "Next").click().run()
        next(b for b in at.button if b.label == "Prev").click().run()
    assert not at.exception, at.exception
    [element] = at.get("bidi_component")
    data = json.loads(element.proto.json)
    n_items = len(data["items"])
    emit("review_page", "grid_payload_kb", round(len(element.proto.json) / 1024, 1), "KiB", n=n_items,
         thumbnails="url" if data["items"][0]["url"].startswith("app/") else "data-url")

    ids = [item["id"] for item in data["items"]]
    decision_times, flip_times = time_reruns_and_flips(at, project.dir, ids, repeats)
    assert not at.exception, at.exception
    for metric, values in (("apptest_rerun_after_decision_s", decision_times),
                           ("apptest_page_flip_s", flip_times)):
        median, p90 = stats(values)
        emit("review_page", metric + "_median", round(median, 4), "s", n=n_items, repeats=repeats)
        emit("review_page", metric + "_p90", round(p90, 4), "s", n=n_items, repeats=repeats)


def time_reruns(at, project_dir, ids: list[str], repeats: int) -> list[float]:
    """Seconds of ``repeats`` Review page reruns on AppTest ``at``, each after a decision stored on one
    of ``ids``: what a key press in the grid costs."""
    from mlfix.review.store import ReviewStore

    reruns = []
    with ReviewStore.for_project(project_dir) as store:
        for i in range(repeats):
            store.decide([ids[i % len(ids)]], "ok", reviewer="bench")
            start = time.perf_counter()
            at.run()
            reruns.append(time.perf_counter() - start)
    return reruns


def time_reruns_and_flips(at, project_dir, ids: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """:func:`time_reruns`, then the seconds of ``repeats`` page flips (Next, Prev, ...)."""
    reruns, flips = time_reruns(at, project_dir, ids, repeats), []
    for i in range(repeats):
        button = next(b for b in at.button if b.label == ("Next" if i % 2 == 0 else "Prev"))
        start = time.perf_counter()
        button.click().run()
        flips.append(time.perf_counter() - start)
    return reruns, flips


def large_project(folder: Path, n: int, classes: int = 10):
    """A synthetic indexed-looking project of ``n`` samples over 200 real image files (sample table
    and orderings only: no features, so the side panel has no neighbours)."""
    from PIL import Image

    from mlfix.project import Project

    images = folder / "images" / "img"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), "RGB").save(images / f"{i}.png")
    project = Project.create(folder / "project", images=folder / "images")
    rows = np.arange(n)
    labels = np.array([f"class{c}" for c in range(classes)], dtype=object)[rows % classes]
    samples = pd.DataFrame({"sample_id": [f"{labels[i]}/{i:07d}.png" for i in rows],
                            "path": [f"img/{i % 200}.png" for i in rows], "label": labels})
    for column in ("box_x", "box_y", "box_w", "box_h"):
        samples[column] = np.nan
    samples["width"], samples["height"], samples["status"] = 48, 48, "ok"
    samples.to_parquet(project.dir / "samples.parquet")
    orders = project.dir / "orders"
    orders.mkdir()
    names = {}
    for c in range(classes):
        names[f"class{c}"] = f"label_{c}"
        np.save(orders / f"label_{c}.npy", rows[rows % classes == c])
    np.save(orders / "all.npy", rows)
    (orders / "orders.json").write_text(json.dumps({"labels": names}))
    (orders / "orders.key.json").write_text("{}")
    return Project.open(project.dir)


def bench_large(n: int, repeats: int) -> None:
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory(prefix="mlfix-bench-large-") as tmp:
        start = time.perf_counter()
        project = large_project(Path(tmp), n)
        setup_s = time.perf_counter() - start
        at = AppTest.from_file(PAGE, default_timeout=600)
        at.session_state["mlfix_project_dir"] = str(project.dir)
        at.session_state["mlfix_reviewer"] = "bench"
        start = time.perf_counter()
        at.run()
        first = time.perf_counter() - start
        assert not at.exception, at.exception
        [element] = at.get("bidi_component")
        ids = [item["id"] for item in json.loads(element.proto.json)["items"]]
        median, p90 = stats(time_reruns(at, project.dir, ids, repeats))
        per_class = n // 10
        emit("review_page", "large_first_run_s", round(first, 3), "s", n=n, per_class=per_class,
             includes="open project, first 200 thumbnails", setup_s=round(setup_s, 1))
        emit("review_page", "large_rerun_after_decision_s_median", round(median, 4), "s", n=n,
             per_class=per_class, repeats=repeats)
        emit("review_page", "large_rerun_after_decision_s_p90", round(p90, 4), "s", n=n,
             per_class=per_class, repeats=repeats)


# ------------------------------------------------------------------------------------ browser

_TIMED_KEY = """
async ([key, until]) => {
  const host = [...document.querySelectorAll('*')].find(e => e.shadowRoot && e.shadowRoot.querySelector('.wrap'));
  const root = host.shadowRoot, wrap = root.querySelector('.wrap');
  const firstId = () => { const img = root.querySelector('.tile img'); return img && img.alt; };
  const before = firstId();
  const t0 = performance.now();
  wrap.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true, composed: true}));
  const frame = () => new Promise(r => requestAnimationFrame(r));
  let tDom = null;
  while (performance.now() - t0 < 20000) {
    await frame();
    if (until === 'ack' && !root.querySelector('.tile.pending')) return [performance.now() - t0, null];
    if (until === 'page' && tDom === null && firstId() !== before) tDom = performance.now() - t0;
    if (until === 'page' && tDom !== null) {
      const imgs = [...root.querySelectorAll('.tile img')].filter(i => {
        const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; });
      if (imgs.every(i => i.complete && i.naturalWidth > 0)) return [tDom, performance.now() - t0];
    }
  }
  return [null, null];
}
"""


def bench_browser(project, repeats: int) -> None:
    if not CHROMIUM.exists():
        print(json.dumps({"bench": "skip", "reason": "no /usr/bin/chromium"}), file=sys.stderr)
        return
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "MLFIX_REVIEWER": "bench"}
    with running_app(project.dir, env=env) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.get_by_text("Project folder").first.wait_for(timeout=120_000)
        page.goto(url + "/review")
        page.locator(".tile").first.wait_for(timeout=120_000)
        _choose(page, "Class", "(all images)")
        page.wait_for_function("() => true")
        time.sleep(2)
        for _ in range(2):  # warm-up
            page.evaluate(_TIMED_KEY, ["n", "page"])
            page.evaluate(_TIMED_KEY, ["p", "page"])
        acks, flips, flips_images = [], [], []
        for i in range(repeats):
            page.evaluate("() => new Promise(r => setTimeout(r, 300))")
            ack, _ = page.evaluate(_TIMED_KEY, ["o", "ack"])
            if ack is not None:
                acks.append(ack / 1000)
        for i in range(repeats):
            dom, images = page.evaluate(_TIMED_KEY, ["n" if i % 2 == 0 else "p", "page"])
            if dom is not None:
                flips.append(dom / 1000)
                flips_images.append(images / 1000)
        tiles = page.locator(".tile").count()
        browser.close()
    for metric, values in (("browser_key_to_stored_s", acks), ("browser_page_flip_s", flips),
                           ("browser_page_flip_images_s", flips_images)):
        if values:
            median, p90 = stats(values)
            emit("review_page", metric + "_median", round(median, 4), "s", n=tiles, repeats=len(values),
                 browser="chromium headless 1280x800")
            emit("review_page", metric + "_p90", round(p90, 4), "s", n=tiles, repeats=len(values),
                 browser="chromium headless 1280x800")


def _choose(page, label: str, option: str) -> None:
    box = page.locator("[data-testid=stSelectbox]").filter(has_text=label).locator("input").first
    box.click()
    page.keyboard.type(option)  # filters the (virtualised) option list
    page.keyboard.press("Enter")
    page.locator(".ctitle").filter(has_text=option).wait_for(timeout=60_000)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--project", help="an indexed project with at least 400 images (default: build the demo)")
    p.add_argument("--no-browser", action="store_true", help="AppTest figures only")
    p.add_argument("--large", type=int, default=1_000_000, help="samples in the synthetic large project")
    args = p.parse_args(argv)
    repeats = 5 if args.quick else 15
    with tempfile.TemporaryDirectory(prefix="mlfix-bench-review-") as tmp:
        if args.project:
            from mlfix.project import Project

            project = Project.open(args.project)
        else:
            project = build_project(Path(tmp) / "demo", limit=240 if args.quick else None)
        bench_apptest(project, repeats)
        if not args.no_browser and not args.quick:
            bench_browser(project, repeats)
    bench_large(20_000 if args.quick else args.large, repeats)


if __name__ == "__main__":
    main()
