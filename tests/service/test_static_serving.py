"""Only thumbnails of the open project can be fetched from the running app: crafted requests for
files outside the app's static folder, and for another project's thumbnails, are refused.

Runs ``streamlit run app.py`` on loopback and sends raw HTTP requests (http.client sends the path
as written, so ``..`` and encoded variants reach the server unchanged).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
from pathlib import Path

import pytest

from mlfix.service.server import free_port, running_app

from mlfix.data import thumbnails
from mlfix.project import Project
from mlfix.ui import grid

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "static"


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on project A, at http://127.0.0.1:PORT; yields (port, project A, project B)."""
    from tests.conftest import write_image_folder

    root = tmp_path_factory.mktemp("static")
    project_a = Project.create(root / "a", write_image_folder(root / "images_a", per_class=2))
    project_b = Project.create(root / "b", write_image_folder(root / "images_b", per_class=2))
    port = free_port()
    with running_app(project_a.dir, port=port, env={**os.environ, "MLFIX_REVIEWER": "t"}, timeout=120):
        yield port, project_a, project_b


ESCAPES = [
    "/app/static/../../etc/passwd",
    "/app/static/../../../../../../etc/passwd",
    "/app/static/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/app/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/app/static/%252e%252e/%252e%252e/etc/passwd",
    "/app/static//etc/passwd",
    "/app/static/%2fetc%2fpasswd",
    "/app/static/..\\..\\..\\..\\..\\..\\etc\\passwd",
    "/app/static/mlfix-thumbs/../../app.py",
    "/app/static/mlfix-thumbs/..%2f..%2fapp.py",
    "/app/static/../mlfix/service/auth.py",
    "/app/static/../.streamlit/config.toml",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_paths_outside_the_static_folder_are_refused(server, path):
    port, _, _ = server
    status, body = get(port, path)
    assert status in (400, 403, 404), (path, status)
    assert b"root:" not in body and b"import" not in body and b"[server]" not in body


def test_a_link_out_of_the_static_folder_is_refused(server):
    port, project_a, _ = server
    link = STATIC / grid.STATIC_SUBDIR / f"test-link-{os.getpid()}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(project_a.dir))
    try:
        status, body = get(port, f"/app/static/{grid.STATIC_SUBDIR}/{link.name}/samples.parquet")
        assert status in (400, 403, 404) and b"PAR1" not in body
        status, _ = get(port, f"/app/static/{grid.STATIC_SUBDIR}/{link.name}/mlfix.toml")
        assert status in (400, 403, 404)
    finally:
        link.unlink()


def test_another_projects_thumbnails_cannot_be_addressed(server):
    """Project B's thumbnails were mirrored by another server process (its own secret): they are
    served under that process's key only, which cannot be worked out from B's folder."""
    port, _, project_b = server
    sample_id = str(project_b.samples["sample_id"].iloc[0])
    cache = thumbnails.for_project(project_b, 128)
    [url] = grid.thumbnail_urls(cache, [sample_id], STATIC)  # this test process plays the other server
    mirror = STATIC / Path(url).relative_to("app/static").parts[0] / Path(url).relative_to("app/static").parts[1]
    try:
        status, body = get(port, "/" + url)
        assert status == 200 and body[:3] == b"\xff\xd8\xff"  # the route serves mirrors (a JPEG) ...
        rel = cache.relpath(sample_id)
        folder = str(Path(cache.folder).resolve())
        guesses = [hashlib.sha1(folder.encode()).hexdigest()[:12],  # ... but not under a key from its path
                   hashlib.sha256(folder.encode()).hexdigest()[:24], Path(project_b.dir).name]
        for key in guesses:
            assert get(port, f"/app/static/{grid.STATIC_SUBDIR}/{key}/{rel}")[0] == 404
        status, body = get(port, f"/app/static/{grid.STATIC_SUBDIR}/")  # no listing of the mirrors
        assert status == 404 and Path(url).parts[3].encode() not in body
    finally:
        shutil.rmtree(mirror, ignore_errors=True)


def test_no_route_serves_project_files(server):
    port, project_a, _ = server
    path = str(Path(project_a.dir) / "mlfix.toml")
    for route in ("/media/", "/component/", "/_stcore/", "/app/static/", "/"):
        status, body = get(port, route + path.lstrip("/"))
        assert b"[source]" not in body and b"images_a" not in body, route
