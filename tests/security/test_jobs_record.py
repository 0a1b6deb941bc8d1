"""A crafted ``jobs/current.json`` chooses nothing: not the file shown, not the file written, not the
process signalled."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from mlfix.service import jobs


@pytest.fixture
def bystander():
    """A process this project did not start (say, the server, or someone else's job)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def craft(project, **record) -> None:
    (project / "jobs").mkdir(exist_ok=True)
    (project / "jobs" / "current.json").write_text(json.dumps(record))


def good(job_id="index-1", **changes) -> dict:
    return {"job_id": job_id, "kind": "index", "pid": 999_999_999, "started": time.time(), "log": f"{job_id}.log",
            "exit": f"{job_id}.exit", **changes}


def test_a_record_naming_another_process_never_signals_it(tmp_path, bystander):
    craft(tmp_path, **good(pid=bystander.pid, proc_start=jobs._proc_start(bystander.pid)))
    status = jobs.job_status(tmp_path)
    assert status.state == "failed" and not status.running
    assert jobs.stop_job(tmp_path) is False and jobs.stop_job(tmp_path, force=True) is False
    time.sleep(0.2)
    assert bystander.poll() is None  # still alive
    assert not (tmp_path / "jobs" / "index-1.exit").exists()


def test_a_record_copied_from_a_real_job_with_another_pid_is_not_signalled(tmp_path, bystander):
    record = jobs.start_job(tmp_path, "nap", command=[sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        craft(tmp_path, **{**record, "pid": bystander.pid})
        assert not jobs.job_status(tmp_path).running
        assert jobs.stop_job(tmp_path, force=True) is False
        assert bystander.poll() is None
    finally:
        craft(tmp_path, **record)
        jobs.stop_job(tmp_path, force=True)


@pytest.mark.parametrize("changes, why", [
    ({"job_id": "../../outside"}, "job_id '../../outside' is not a plain name"),
    ({"log": "/etc/passwd"}, "its log and exit files are not the job's own (jobs/<job_id>.log and .exit)"),
    ({"exit": "../../victim.txt"}, "its log and exit files are not the job's own (jobs/<job_id>.log and .exit)"),
    ({"pid": 1}, "pid '1' is not a process id"),
    ({"pid": "1; rm -rf /"}, "pid '1; rm -rf /' is not a process id"),
    ({"started": "yesterday"}, "its start time is not a number"),
])
def test_a_record_of_the_wrong_shape_is_ignored_with_a_message(tmp_path, changes, why):
    craft(tmp_path, **good(**changes))
    status = jobs.job_status(tmp_path)
    assert (status.state, status.record, status.log_tail) == ("failed", {}, "")
    assert status.message == (f"jobs/current.json is not a job record mlfix wrote ({why}); it was ignored and "
                              "no process was signalled")
    assert jobs.stop_job(tmp_path) is False and jobs.stop_requested_at(tmp_path) is None


def test_a_real_job_starts_over_a_crafted_record(tmp_path):
    craft(tmp_path, **good(job_id="../x"))
    jobs.start_job(tmp_path, "index", command=[sys.executable, "-c", "print('fresh')"])
    assert jobs.wait_job(tmp_path, timeout=30).state == "finished"


def test_a_log_that_is_a_link_is_not_shown(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the admin token is hunter2")
    craft(tmp_path, **good(pid=999_999_999))
    (tmp_path / "jobs" / "index-1.log").symlink_to(secret)
    status = jobs.job_status(tmp_path)
    assert status.state == "failed" and "hunter2" not in status.log_tail and status.log_tail == ""


def test_a_current_json_that_is_a_link_is_not_read(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(good(pid=999_999_999)))
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "current.json").symlink_to(other)
    assert jobs.job_status(tmp_path).state == "none"


def test_the_project_own_job_is_still_stopped(tmp_path):
    jobs.start_job(tmp_path, "nap", command=[sys.executable, "-c", "import time; time.sleep(60)"])
    assert jobs.job_status(tmp_path).running
    assert jobs.stop_job(tmp_path) is True
    assert jobs.wait_job(tmp_path, timeout=30).state == "stopped"
