"""The Streamlit server under many simultaneous browser sessions on the Review page (loopback only).

    python -m bench.app_load [--quick] [--sessions N] [--presses R] [--project DIR]

One ``streamlit run app.py`` on 127.0.0.1 and one headless Debian Chromium with N browser contexts
(N separate Streamlit sessions, 20 by default; 2 with ``--quick``), all started at once:

- ``open_grid_s``: from ``page.goto(/review)`` until the grid shows its tiles (median and p90 over
  sessions): the app shell, the Review page's script run and the component, under N-way load.
- ``open_images_s``: until the thumbnails in view are decoded as well.
- ``decide_s``: every session presses ``o`` (checked, fine) R times at once; time from the key press
  until the grid has the server's acknowledgement, i.e. the decision is in the store (median and p90
  over all presses): one script run and one store write per press, N at a time.
- ``failed_sessions``: sessions that did not show the grid within the time limit (120 s).

Without ``--project`` it builds the demo (200 digits, 100 with ``--quick``; fast index settings) in a
temporary folder.
Every session and wait is bounded in time; the server and browser are stopped at the end.
Timings depend on the machine: both the server and the N browser pages share its CPUs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlfix.service.server import running_app
from bench.common import emit, parser
from bench.review_page import CHROMIUM

REPO = Path(__file__).resolve().parents[1]
FAST = {"backbone": "resnet18", "weights": "random", "image_size": 64, "words": 32}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LIMIT_S = 120

# Press a key in the grid; resolve with the ms until no tile is pending (the server acknowledged the
# decision), or null after LIMIT_S (bench.review_page's version gives up after 20 s: too short here).
_KEY_TO_ACK = """
async ([key, limitMs]) => {
  const host = [...document.querySelectorAll('*')].find(e => e.shadowRoot && e.shadowRoot.querySelector('.wrap'));
  const root = host.shadowRoot, wrap = root.querySelector('.wrap');
  const t0 = performance.now();
  wrap.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true, composed: true}));
  while (performance.now() - t0 < limitMs) {
    await new Promise(r => requestAnimationFrame(r));
    if (!root.querySelector('.tile.pending')) return performance.now() - t0;
  }
  return null;
}
"""

_IMAGES_READY = """
() => {
  const host = [...document.querySelectorAll('*')].find(e => e.shadowRoot && e.shadowRoot.querySelector('.tile img'));
  if (!host) return false;
  const imgs = [...host.shadowRoot.querySelectorAll('.tile img')].filter(i => {
    const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; });
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}
"""


def bench_project(project: str | None, quick: bool, tmp: Path) -> Path:
    """``project`` when given, else the demo (200 digits, 100 with ``--quick``; FAST settings) in ``tmp``."""
    if project:
        return Path(project)
    from mlfix.demo import build_demo

    return build_demo(tmp / "demo", limit=100 if quick else 200, **FAST).dir


def stats(values: list[float]) -> tuple[float, float]:
    return float(np.median(values)), float(np.percentile(values, 90))


async def _session(browser, url: str, presses: int, start: asyncio.Event, barrier: asyncio.Barrier) -> dict:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    result = {"open": None, "images": None, "decide": []}
    try:
        await start.wait()
        t0 = time.perf_counter()
        await page.goto(url + "/review", timeout=LIMIT_S * 1000)
        await page.locator(".tile").first.wait_for(timeout=LIMIT_S * 1000)
        result["open"] = time.perf_counter() - t0
        await page.wait_for_function(_IMAGES_READY, timeout=LIMIT_S * 1000, polling=50)
        result["images"] = time.perf_counter() - t0
    except Exception as error:  # a session that fails is counted, the others go on
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    for _ in range(presses):
        await barrier.wait()  # every session presses at once
        if "error" in result:
            continue
        try:
            ack = await asyncio.wait_for(page.evaluate(_KEY_TO_ACK, ["o", LIMIT_S * 1000]), LIMIT_S + 10)
            if ack is None:
                result["unacknowledged"] = result.get("unacknowledged", 0) + 1
            else:
                result["decide"].append(ack / 1000)
        except Exception as error:
            result["error"] = f"decide: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    await context.close()
    return result


async def _rewrite_resend(route, resend_ms: int) -> None:
    """Serve the page's scripts with the grid's resend interval replaced (a diagnostic)."""
    response = await route.fetch()
    body = await response.text()
    await route.fulfill(response=response, body=body.replace("const RESEND_MS = 1500;", f"const RESEND_MS = {resend_ms};"))


async def _run_sessions(url: str, sessions: int, presses: int, resend_ms: int | None = None) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        if resend_ms is not None:
            original = browser.new_context

            async def new_context(**kwargs):
                context = await original(**kwargs)
                await context.route("**/*", lambda route: _rewrite_resend(route, resend_ms)
                                    if route.request.resource_type in ("script", "fetch", "xhr") else route.continue_())
                return context

            browser.new_context = new_context
        try:
            warm = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()  # thumbnails made, caches filled
            await warm.goto(url + "/review", timeout=LIMIT_S * 1000)
            await warm.locator(".tile").first.wait_for(timeout=LIMIT_S * 1000)
            await warm.wait_for_function(_IMAGES_READY, timeout=LIMIT_S * 1000, polling=100)
            await warm.close()
            start, barrier = asyncio.Event(), asyncio.Barrier(sessions)
            tasks = [asyncio.create_task(_session(browser, url, presses, start, barrier)) for _ in range(sessions)]
            await asyncio.sleep(1.0)  # every context and page exists before the clock starts
            start.set()
            return await asyncio.wait_for(asyncio.gather(*tasks), timeout=LIMIT_S * (3 + presses))
        finally:
            await browser.close()


def run(project_dir: Path, sessions: int, presses: int, resend_ms: int | None = None) -> list[dict]:
    with running_app(project_dir, env={**os.environ, "MLFIX_REVIEWER": "bench"}) as url:
        return asyncio.run(_run_sessions(url, sessions, presses, resend_ms))


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, help="simultaneous browser sessions (default 20; 2 with --quick)")
    p.add_argument("--presses", type=int, help="decisions per session (default 5; 2 with --quick)")
    p.add_argument("--project", help="an existing project (default: build the 200-image demo)")
    p.add_argument("--resend-ms", type=int, help="diagnostic: replace the grid's resend interval (1500 ms) in the browser")
    args = p.parse_args(argv)
    sessions = args.sessions or (2 if args.quick else 20)
    presses = args.presses if args.presses is not None else (2 if args.quick else 5)
    if not CHROMIUM.exists():
        print(json.dumps({"bench": "skip", "reason": f"no {CHROMIUM}"}), file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="mlfix-bench-load-") as tmp:
        project_dir = bench_project(args.project, args.quick, Path(tmp))
        from mlfix.project import Project

        before = len(Project.open(project_dir).reviews.decisions())
        results = run(project_dir, sessions, presses, args.resend_ms)
        stored = len(Project.open(project_dir).reviews.decisions()) - before
    setup = {"sessions": sessions, "browser": "chromium headless 1280x800", "server": "streamlit loopback",
             "load_avg_1m": round(os.getloadavg()[0], 1), "resend_ms": args.resend_ms or 1500}
    failed = [r for r in results if "error" in r]
    for metric, values in (("open_grid_s", [r["open"] for r in results if r["open"] is not None]),
                           ("open_images_s", [r["images"] for r in results if r["images"] is not None]),
                           ("decide_s", [f for r in results for f in r["decide"]])):
        if values:
            median, p90 = stats(values)
            emit("app_load", metric + "_median", round(median, 3), "s", n=len(values), **setup)
            emit("app_load", metric + "_p90", round(p90, 3), "s", n=len(values), **setup)
    emit("app_load", "failed_sessions", len(failed), "sessions", n=sessions, **setup,
         errors=sorted({r["error"] for r in failed})[:3])
    emit("app_load", "stored_decisions", stored, "decisions", n=sessions * presses, **setup,
         note="one 'ok' per press (the warm-up session makes none): n stored = nothing lost or doubled")
    emit("app_load", "unacknowledged_presses", sum(r.get("unacknowledged", 0) for r in results), "presses",
         n=sessions * presses, **setup)


if __name__ == "__main__":
    main()
