"""Starting the app: ``Project.serve()`` returns once the app answers, and its handle stops it."""

from __future__ import annotations

import socket
import sys
import urllib.request

import pytest

from mlfix.project import Project
from mlfix.service import server


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_serve_returns_once_the_app_answers_and_stop_closes_the_port(tiny_image_folder, tmp_path):
    project = Project.create(tmp_path / "project", images=tiny_image_folder)
    app = project.serve(address="127.0.0.1")
    try:
        assert app.running and str(app) == app.url == f"http://127.0.0.1:{app.port}"
        with urllib.request.urlopen(app.url, timeout=10) as response:  # no waiting: it answers now
            assert response.status == 200
    finally:
        app.stop()
    assert not app.running and not answers(app.port)
    app.stop()  # twice is harmless
    assert (project.dir / "serve.log").exists()


@pytest.mark.slow
def test_the_handle_is_a_context_manager(tiny_image_folder, tmp_path):
    project = Project.create(tmp_path / "project", images=tiny_image_folder)
    with project.serve(address="127.0.0.1") as app:
        assert answers(app.port)
    assert not answers(app.port) and "stopped" in repr(app)


def test_an_app_that_exits_at_once_is_an_error_naming_its_log(tmp_path, monkeypatch):
    def exits(project_dir, port, address="localhost", env=None, log=None, **popen):
        import subprocess

        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], stdout=log, stderr=log)

    monkeypatch.setattr(server, "start_app", exits)
    with pytest.raises(RuntimeError, match=r"exited with code 3 .*see its output in .*serve\.log"):
        server.serve_app(tmp_path, log=tmp_path / "serve.log", timeout=20)
