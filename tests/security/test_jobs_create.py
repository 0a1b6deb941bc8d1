"""A project created from the Dataset page is scanned in a job (its own process), never inside the
server: the page follows the scan's progress, and says why when it failed."""

from __future__ import annotations

import json
import sys

from mlfix.service import jobs
from tests.ui.test_app_pages import app_on


def test_the_page_follows_a_scan_running_in_a_job(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFIX_PROJECT", raising=False)
    target = tmp_path / "new"
    (target / "progress").mkdir(parents=True)
    (target / "progress" / "index.jsonl").write_text(
        json.dumps({"job": "index", "stage": "scan", "done": 256, "total": 1024, "time": 1.0}) + "\n")
    jobs.start_job(target, "index", command=[sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        at = app_on(target)
        assert any("Creating the project" in i.value for i in at.info)
        assert [p.proto.text for p in at.get("progress")] == ["scan: 256 of 1,024 images"]
        assert not at.error
    finally:
        jobs.stop_job(target, force=True)
    jobs.wait_job(target)
    at.run()
    assert [e.value for e in at.error][0] == "The project was not created: stopped on request."


def test_a_failed_scan_says_why_with_its_log(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFIX_PROJECT", raising=False)
    target = tmp_path / "new"
    target.mkdir()
    jobs.start_job(target, "index", command=[  # a stand-in for `mlfix index --scan-only` that fails
        sys.executable, "-c", "print('image source not found: /nowhere'); raise SystemExit(1)"])
    assert jobs.wait_job(target, timeout=60).state == "failed"
    at = app_on(target)
    assert at.error[0].value.startswith("The project was not created: the job failed with exit code")
    assert "image source not found" in at.code[0].value
