"""Background jobs: one per project, exit codes recorded, stop by process group, stale records."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from mlfix.service import jobs


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_finished_job_reports_its_output_and_exit_code(tmp_path):
    record = jobs.start_job(tmp_path, "index", command=py("print('hello from the job')"))
    assert record["kind"] == "index" and record["pid"] > 0
    status = jobs.wait_job(tmp_path, timeout=30)
    assert status.state == "finished"
    assert status.returncode == 0
    assert "hello from the job" in status.log_tail
    on_disk = json.loads((tmp_path / "jobs" / "current.json").read_text())
    assert on_disk["job_id"] == record["job_id"]
    assert (tmp_path / "jobs" / record["log"]).exists()


def test_a_crashing_job_is_failed_with_the_traceback_in_the_log_tail(tmp_path):
    jobs.start_job(tmp_path, "train", command=py("raise RuntimeError('out of cheese')"))
    status = jobs.wait_job(tmp_path, timeout=30)
    assert status.state == "failed"
    assert status.returncode == 1
    assert "RuntimeError: out of cheese" in status.log_tail
    assert "exit code 1" in status.message


def test_only_one_job_runs_per_project_and_a_second_is_refused(tmp_path):
    jobs.start_job(tmp_path, "train", command=py("import time; print('ready', flush=True); time.sleep(30)"))
    try:
        wait_for_log(tmp_path, "ready")
        assert jobs.job_status(tmp_path).running
        with pytest.raises(jobs.JobRunningError, match="already running"):
            jobs.start_job(tmp_path, "index", command=py("print(1)"))
    finally:
        assert jobs.stop_job(tmp_path)
    status = jobs.wait_job(tmp_path, timeout=30)
    assert status.state == "stopped"
    assert status.returncode == -signal.SIGTERM
    # once stopped, a new job may start, and the old record goes to the history
    jobs.start_job(tmp_path, "index", command=py("print('second')"))
    assert jobs.wait_job(tmp_path, timeout=30).state == "finished"
    history = (tmp_path / "jobs" / "history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["state"] == "stopped"


def wait_for_log(project_dir, text: str) -> None:
    for _ in range(600):
        if text in jobs.job_status(project_dir).log_tail:
            return
        time.sleep(0.05)
    pytest.fail(f"the job never wrote {text!r}")


def test_a_job_stopped_right_after_it_started_is_stopped_not_failed(tmp_path):
    jobs.start_job(tmp_path, "train", command=py("import time; time.sleep(30)"))
    assert jobs.stop_job(tmp_path)
    assert jobs.wait_job(tmp_path, timeout=30).state == "stopped"


def test_stop_reaches_the_whole_process_group(tmp_path):
    # the job starts a grandchild; stopping the job must stop it too
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "open('grandchild.pid', 'w').write(str(p.pid)); time.sleep(60)")
    jobs.start_job(tmp_path, "train", command=py(code))
    pid_file = tmp_path / "grandchild.pid"
    for _ in range(400):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert jobs.stop_job(tmp_path)
    assert jobs.wait_job(tmp_path, timeout=30).state == "stopped"
    for _ in range(200):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        state = open(f"/proc/{grandchild}/stat").read().rsplit(")", 1)[1].split()[0] \
            if os.path.exists(f"/proc/{grandchild}/stat") else "?"
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived stop_job")


def test_a_stale_record_whose_process_is_gone_counts_as_failed_and_allows_a_new_job(tmp_path):
    # a record left behind by a job killed with SIGKILL (no exit file): a pid that is not running
    dead = subprocess_pid_that_exited()
    jobs.write_json_atomic(tmp_path / "jobs" / "current.json",
                           {"job_id": "train-old", "kind": "train", "pid": dead, "started": time.time(),
                            "log": "train-old.log", "exit": "train-old.exit"})
    status = jobs.job_status(tmp_path)
    assert status.state == "failed" and "without recording an exit code" in status.message
    jobs.start_job(tmp_path, "index", command=py("print('fresh')"))
    assert jobs.wait_job(tmp_path, timeout=30).state == "finished"


def subprocess_pid_that_exited() -> int:
    import subprocess

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_force_stop_kills_a_job_that_ignores_sigterm(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    jobs.start_job(tmp_path, "train", command=py(code))
    wait_for_log(tmp_path, "ready")
    assert jobs.stop_job(tmp_path, force=True)
    status = jobs.wait_job(tmp_path, timeout=30)
    assert status.state == "stopped"


def test_no_job_and_bad_arguments(tmp_path):
    assert jobs.job_status(tmp_path).state == "none"
    assert jobs.stop_job(tmp_path) is False
    with pytest.raises(ValueError, match="unknown job kind"):
        jobs.start_job(tmp_path, "dance")
    with pytest.raises(jobs.JobError, match="not found"):
        jobs.start_job(tmp_path / "missing", "index")


def test_the_default_command_runs_the_mlfix_cli_for_the_project(tmp_path):
    cmd = jobs.mlfix_command(tmp_path, "train", ["--epochs", "3"])
    assert cmd[1:4] == ["-m", "mlfix.cli", "train"]
    assert cmd[4:] == ["--project", str(tmp_path.resolve()), "--epochs", "3"]


def test_a_command_that_cannot_start_fails_cleanly(tmp_path):
    jobs.start_job(tmp_path, "index", command=[str(tmp_path / "no-such-program")])
    status = jobs.wait_job(tmp_path, timeout=30)
    assert status.state == "failed" and status.returncode == 127
    assert "cannot start" in status.log_tail


def test_scores_is_a_job_kind_that_runs_mlfix_scores(tmp_path):
    """The Review page's "Compute scores" runs ``mlfix scores`` as a background job."""
    assert "scores" in jobs.JOB_KINDS
    cmd = jobs.mlfix_command(tmp_path, "scores")
    assert cmd[1:] == ["-m", "mlfix.cli", "scores", "--project", str(tmp_path.resolve())]
