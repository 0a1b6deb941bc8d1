"""The shipped proxy configurations in front of a real server, in a real browser (Chromium + Playwright).

The Content-Security-Policy of deploy/Caddyfile and deploy/nginx.conf must not break the app: a
reviewer signs in through the proxy, gets the Review grid with its thumbnails, makes a decision that
is stored (the websocket passes), and the browser reports no CSP violation. Through the proxy every response carries the headers, and
``/_stcore/metrics`` answers 404. Skipped where Chromium or the proxy is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlfix.project import Project
from mlfix.review.store import ReviewStore
from mlfix.service.server import free_port, running_app
from tests.service.test_deploy_configs import CADDY, NGINX, REQUIRED_HEADERS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ADMIN, REVIEWER = "admin-token-0123456789", "reviewer-token-0123456789"


def caddy_site(app_port: int, port: int, tmp_path: Path) -> list[str]:
    """deploy/Caddyfile on plain http://127.0.0.1:port (no certificate), in front of the app."""
    site = CADDY.read_text().replace("review.example.org {", f"http://127.0.0.1:{port} {{") \
        .replace("reverse_proxy 127.0.0.1:8501", f"reverse_proxy 127.0.0.1:{app_port}")
    (tmp_path / "Caddyfile").write_text("{\n\tadmin off\n\tstorage file_system " + str(tmp_path) + "\n}\n" + site)
    return ["caddy", "run", "--adapter", "caddyfile", "--config", str(tmp_path / "Caddyfile")]


def nginx_site(app_port: int, port: int, tmp_path: Path) -> list[str]:
    """deploy/nginx.conf's TLS server on plain 127.0.0.1:port (no certificate), in front of the app."""
    site = NGINX.read_text().split("\nserver {\n    listen 80;")[0]
    site = re.sub(r"    ssl_certificate.*\n", "", site).replace("listen 443 ssl;", f"listen 127.0.0.1:{port};") \
        .replace("proxy_pass http://127.0.0.1:8501;", f"proxy_pass http://127.0.0.1:{app_port};")
    (tmp_path / "site.conf").write_text(site)
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for folder in temp.values():
        folder.mkdir()
    paths = "".join(f"    {name}_temp_path {folder};\n" for name, folder in
                    (("client_body", temp["body"]), *((n, temp[n]) for n in ("proxy", "fastcgi", "uwsgi", "scgi"))))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    map $http_upgrade $connection_upgrade {{ default upgrade; }}\n{paths}"
        f"    include {tmp_path}/site.conf;\n}}\n")
    return ["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]


PROXIES = [pytest.param("caddy", caddy_site, id="caddy"), pytest.param("nginx", nginx_site, id="nginx")]


@contextmanager
def proxy(command: list[str], url: str, log: Path):
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url + "/_stcore/health", timeout=2).close()
                    break
                except OSError:
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, f"the proxy did not answer: {log.read_text()}"
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(10)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def project(tmp_path_factory) -> Project:
    from tests.conftest import write_image_folder

    root = tmp_path_factory.mktemp("deploy")
    return Project.create(root / "project", write_image_folder(root / "images", per_class=3))


def review_through(url: str) -> tuple[str, list[str]]:
    """Sign in as a reviewer at ``url``, wait for the grid's thumbnails, mark the first image ok.

    Returns that image's id and the browser's Content-Security-Policy complaints.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            violations = []
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(url + "/")
            sidebar = page.locator("[data-testid='stSidebar']")
            sidebar.get_by_role("textbox", name="Your name").fill("bob", timeout=90_000)
            sidebar.get_by_role("textbox", name="Access token").fill(REVIEWER)
            sidebar.get_by_role("button", name="Sign in").click()
            page.locator(".tile img").first.wait_for(timeout=90_000)
            page.wait_for_function("() => [...document.querySelectorAll('.tile img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
            first = page.locator(".tile img").first.get_attribute("alt")
            page.locator(".wrap").focus()
            page.keyboard.press("o")  # a decision's round trip over the proxied websocket
            page.locator(".tile[data-status='ok']:not(.pending)").first.wait_for(timeout=30_000)
            assert page.locator("[data-testid='stException']").count() == 0
            return first, violations
        finally:
            browser.close()


@pytest.mark.parametrize("binary, configure", PROXIES)
def test_the_app_works_behind_the_shipped_proxy_with_its_policy(binary, configure, project, tmp_path):
    if not CHROMIUM.exists() or shutil.which(binary) is None:
        pytest.skip(f"needs Chromium at {CHROMIUM} and {binary} installed")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFIX_")},
           "MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": REVIEWER}
    port = free_port()
    with open(tmp_path / "streamlit.log", "w") as log, running_app(project.dir, env=env, log=log) as app:
        command = configure(int(app.rsplit(":", 1)[1]), port, tmp_path)
        with proxy(command, f"http://127.0.0.1:{port}", tmp_path / "proxy.log") as url:
            assert status_of(f"{url}/_stcore/metrics") == 404 and status_of(f"{url}/_stcore/agent/mcp") == 404
            with urllib.request.urlopen(url + "/", timeout=10) as response:
                headers = response.headers
            assert {name: headers.get(name) for name in REQUIRED_HEADERS} == REQUIRED_HEADERS
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            first, violations = review_through(url)
    assert violations == []
    with ReviewStore.for_project(project.dir) as store:
        stored = store.decisions()
    assert stored[["sample_id", "kind", "reviewer"]].values.tolist() == [[first, "ok", "bob"]]
