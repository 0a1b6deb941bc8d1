"""Background jobs (indexing, training, scoring) that run outside the Streamlit script run.

A job is a separate process in its own session (so a page refresh, or the Streamlit server
stopping, does not kill it), started through a small wrapper (``python -m mlfix.service.jobs``) that
records the exit code. Everything about a job lives in ``<project>/jobs/``::

    current.json        the job record: job_id, kind, pid, command, args, started (written atomically)
    <job_id>.log        stdout and stderr
    <job_id>.exit       {"returncode": int, "stopped": bool, "finished": time}, written by the wrapper
    <job_id>.stop       written by :func:`stop_job` (a stop request)
    history.jsonl       earlier job records with their outcome

Only one job runs per project at a time: :func:`start_job` refuses a second one with
:class:`JobRunningError`. A record whose process is gone without an exit file (killed with
SIGKILL, machine restarted) is *stale*: it counts as failed, and a new job may start.

Example (``start_job(project_dir, "index")`` runs ``mlfix index --project DIR``; a stand-in command
that only sleeps shows the life of a job without the work):
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> job_status(folder).state
    'none'
    >>> record = start_job(folder, "nap", command=[sys.executable, "-c", "import time; time.sleep(60)"])
    >>> job_status(folder).state
    'running'
    >>> stop_job(folder)
    True
    >>> wait_job(folder).state
    'stopped'
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from mlfix.errors import JobError, JobRunningError
from mlfix.atomic import write_json_atomic

JOB_KINDS = ("index", "train", "scores")
JOBS_DIR = "jobs"
CURRENT = "current.json"


@dataclass
class JobStatus:
    """What :func:`job_status` knows about the project's latest job.

    ``state``: ``"none"`` (no job yet), ``"running"``, ``"finished"`` (exit code 0), ``"stopped"``
    (by :func:`stop_job`), or ``"failed"`` (non-zero exit, or the process vanished).
    """

    state: str
    record: dict = field(default_factory=dict)
    returncode: int | None = None
    message: str = ""
    log_tail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def kind(self) -> str | None:
        return self.record.get("kind")


def a_job(kind: str | None) -> str:
    """The job's kind with its article, for messages.

    >>> a_job("index"), a_job("train"), a_job(None)
    ('an index job', 'a train job', 'a background job')
    """
    word = kind or "background"
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word} job"


def jobs_dir(project_dir: str | os.PathLike) -> Path:
    return Path(project_dir) / JOBS_DIR


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def mlfix_command(project_dir: str | os.PathLike, kind: str, args: Sequence[str] = ()) -> list[str]:
    """``python -m mlfix.cli <kind> --project DIR ARGS...`` for the project's own settings."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; use one of {JOB_KINDS}")
    return [sys.executable, "-m", "mlfix.cli", kind, "--project", str(Path(project_dir).resolve()),
            *map(str, args)]


@contextlib.contextmanager
def _lock(project_dir: str | os.PathLike):
    """Serialise starts within the project (two tabs pressing Start at once)."""
    folder = jobs_dir(project_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_job(project_dir: str | os.PathLike, kind: str, args: Sequence[str] = (),
              command: Sequence[str] | None = None, env: dict | None = None) -> dict:
    """Start a background job and return its record.

    Args:
        project_dir: the project folder (``jobs/`` is made in it).
        kind: ``"index"``, ``"train"`` or ``"scores"`` (runs ``mlfix <kind> --project DIR ARGS``); any short name
            when ``command`` is given.
        args: extra command-line arguments for ``mlfix <kind>``.
        command: run this command instead of the mlfix CLI (tests use a python one-liner).
        env: extra environment variables for the job.

    Raises:
        JobRunningError: a job is already running in this project (stop it first, or wait).
    """
    folder = Path(project_dir)
    if not folder.is_dir():
        raise JobError(f"project folder not found: {folder}")
    if not kind or not kind.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"job kind must be a short name of letters and digits, got {kind!r}")
    cmd = list(map(str, command)) if command is not None else mlfix_command(folder, kind, args)
    with _lock(folder):
        status = job_status(folder)
        if status.running:
            rec = status.record
            raise JobRunningError(
                f"{a_job(rec.get('kind'))} (pid {rec.get('pid')}) is already running in this project "
                f"since {time.strftime('%H:%M:%S', time.localtime(rec.get('started', 0)))}; "
                "stop it or wait until it ends")
        if status.record:
            _archive(folder, status)
        job_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid() % 10000:04d}{time.time_ns() % 1000:03d}"
        log_path = jobs_dir(folder) / f"{job_id}.log"
        exit_path = jobs_dir(folder) / f"{job_id}.exit"
        wrapper = [sys.executable, "-m", "mlfix.service.jobs", "--exit-file", str(exit_path), "--", *cmd]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                wrapper, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(folder.resolve()), start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        record = {"job_id": job_id, "kind": kind, "pid": process.pid, "command": cmd,
                  "args": list(map(str, args)), "started": time.time(),
                  "proc_start": _proc_start(process.pid), "log": log_path.name,
                  "exit": exit_path.name}
        write_json_atomic(jobs_dir(folder) / CURRENT, record)
    return record


def _archive(folder: Path, status: JobStatus) -> None:
    entry = {**status.record, "state": status.state, "returncode": status.returncode}
    with open(jobs_dir(folder) / "history.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks (Linux), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(record: dict) -> bool:
    pid = int(record.get("pid") or 0)
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own finished child so it is not a zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that pid: cannot be ours, but be careful
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we have
    if state == "Z":
        return False
    started = record.get("proc_start")
    return started is None or _proc_start(pid) == started


def read_log_tail(path: str | os.PathLike, max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` of a log file (decoded leniently), '' when there is none."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def current_job(project_dir: str | os.PathLike) -> dict | None:
    """The latest job record, or None."""
    return _read_json(jobs_dir(project_dir) / CURRENT)


def job_status(project_dir: str | os.PathLike, tail_bytes: int = 4000) -> JobStatus:
    """The state of the project's latest job (see :class:`JobStatus`); never raises for a bad record."""
    record = current_job(project_dir)
    if not record:
        return JobStatus("none")
    folder = jobs_dir(project_dir)
    log_path = folder / str(record.get("log", ""))
    exit_info = _read_json(folder / str(record.get("exit", ""))) if record.get("exit") else None
    if exit_info is None and _alive(record):
        return JobStatus("running", record, log_tail=read_log_tail(log_path, tail_bytes))
    if exit_info is None:
        # Re-check: the wrapper may have written the exit file between the two reads.
        exit_info = _read_json(folder / str(record.get("exit", "")))
    tail = read_log_tail(log_path, tail_bytes)
    stop_requested = (folder / f"{record.get('job_id')}.stop").exists()
    if exit_info is None and stop_requested:  # stopped before the wrapper could record it
        return JobStatus("stopped", record, None, "stopped on request", tail)
    if exit_info is None:
        return JobStatus("failed", record, None, "the job's process ended without recording an exit "
                         "code (killed, or the machine restarted); see the log", tail)
    code = exit_info.get("returncode")
    if exit_info.get("stopped"):
        return JobStatus("stopped", record, code, "stopped on request", tail)
    if code == 0:
        return JobStatus("finished", record, 0, "finished", tail)
    return JobStatus("failed", record, code, f"the job failed with exit code {code}; see the log", tail)


def stop_job(project_dir: str | os.PathLike, force: bool = False) -> bool:
    """Ask the running job to stop: SIGTERM (SIGKILL with ``force``) to its process group.

    Returns False when no job was running. Does not wait: :func:`job_status` shows ``stopped``
    once the job has exited.
    """
    status = job_status(project_dir)
    if not status.running:
        return False
    pid = int(status.record["pid"])
    # Remember the request: a job stopped before its wrapper set up its handler leaves no exit file.
    (jobs_dir(project_dir) / f"{status.record.get('job_id')}.stop").write_text(str(time.time()))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(pid), signal.SIGKILL if force else signal.SIGTERM)
    if force:  # the wrapper dies too and cannot write the exit file: write it for it
        write_json_atomic(jobs_dir(project_dir) / status.record["exit"],
                          {"returncode": -signal.SIGKILL, "stopped": True, "finished": time.time()})
    return True


def stop_requested_at(project_dir: str | os.PathLike) -> float | None:
    """When :func:`stop_job` was last asked to stop the current job (epoch seconds), else None."""
    record = current_job(project_dir)
    if not record:
        return None
    try:
        return float((jobs_dir(project_dir) / f"{record.get('job_id')}.stop").read_text())
    except (OSError, ValueError):
        return None


def wait_job(project_dir: str | os.PathLike, timeout: float = 60.0, poll: float = 0.05) -> JobStatus:
    """Block until the current job is no longer running (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(project_dir)
        if not status.running or time.monotonic() > deadline:
            return status
        time.sleep(poll)


def _run_wrapped(exit_file: str, command: list[str]) -> int:
    """Run ``command``, then write its exit code to ``exit_file`` (the job wrapper's body)."""
    stopping = {"flag": False}

    def on_term(signum, frame):  # the whole group got it; just remember and wait for the child
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        print(f"mlfix job: cannot start {command[:1]}: {err}", flush=True)
        write_json_atomic(Path(exit_file), {"returncode": 127, "stopped": False, "finished": time.time()})
        return 127
    if stopping["flag"]:  # asked to stop before the child existed
        child.terminate()
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    write_json_atomic(Path(exit_file), {"returncode": code, "stopped": stopping["flag"],
                                        "finished": time.time()})
    return 0 if code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 4 or argv[0] != "--exit-file" or argv[2] != "--":
        print("usage: python -m mlfix.service.jobs --exit-file FILE -- COMMAND...", file=sys.stderr)
        return 2
    return _run_wrapped(argv[1], argv[3:])


if __name__ == "__main__":
    sys.exit(main())
