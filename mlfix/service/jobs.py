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

``current.json`` is never trusted as it is (anyone who can write the project folder can write it):
a record whose ``job_id`` is not a plain name, or whose log or exit file is not ``<job_id>.log`` /
``<job_id>.exit`` in ``jobs/``, is ignored; a ``pid`` counts as the job only while it is the job
wrapper this project started (same start time, and its command line is this wrapper with this
job's exit file), so :func:`stop_job` never signals any other process; links are not followed.

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
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from mlfix.errors import JobError, JobRunningError
from mlfix.atomic import write_json_atomic, write_text_atomic

JOB_KINDS = ("index", "train", "finetune", "scores")
JOBS_DIR = "jobs"
CURRENT = "current.json"
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # a plain file name: no dots, no slashes
WRAPPER = "mlfix.service.jobs"


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
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            value = json.loads(handle.read(1_000_000))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def record_problem(record: dict) -> str | None:
    """Why a job record cannot be one that :func:`start_job` wrote, or None when its shape is right.

    >>> record_problem({"job_id": "index-1", "pid": 42, "log": "index-1.log", "exit": "index-1.exit"})
    >>> record_problem({"job_id": "../x", "pid": 42, "log": "/etc/passwd", "exit": "x.exit"})
    "job_id '../x' is not a plain name"
    """
    job_id, pid = record.get("job_id"), record.get("pid")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        return f"job_id {str(job_id)[:60]!r} is not a plain name"
    if record.get("log") != f"{job_id}.log" or record.get("exit") != f"{job_id}.exit":
        return "its log and exit files are not the job's own (jobs/<job_id>.log and .exit)"
    if type(pid) is not int or pid <= 1:
        return f"pid {str(pid)[:20]!r} is not a process id"
    started = record.get("started", 0)
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        return "its start time is not a number"
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


def _cmdline(pid: int) -> list[str] | None:
    """The command line of a process (``/proc``, else ``ps``), None when it cannot be read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")[:-1]
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split() or None


def _ours(record: dict, folder: Path) -> bool:
    """True only if the record's pid is the wrapper this project started for this job: the start
    time recorded matches (Linux), and its command line is ``-m mlfix.service.jobs --exit-file
    <this project>/jobs/<job_id>.exit``."""
    pid = record["pid"]
    if Path("/proc").is_dir() and (record.get("proc_start") is None
                                   or _proc_start(pid) != record.get("proc_start")):
        return False
    args = _cmdline(pid)
    for _ in range(40):  # empty for a moment while the process is being exec'd (start_job just ran)
        if args:
            break
        time.sleep(0.005)
        args = _cmdline(pid)
    args = args or []
    try:
        at = args.index("--exit-file")
    except ValueError:
        return False
    exit_file = Path(args[at + 1]) if at + 1 < len(args) else Path()
    return (WRAPPER in args[:at] and exit_file.name == record["exit"]
            and exit_file.parent.resolve() == jobs_dir(folder).resolve())


def _alive(record: dict, folder: Path) -> bool:
    pid = record["pid"]
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
    return _ours(record, folder)


def read_log_tail(path: str | os.PathLike, max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` of a log file (decoded leniently), '' when there is none."""
    try:  # a link is not followed: the log is shown in the page
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
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
    problem = record_problem(record)
    if problem is not None:
        return JobStatus("failed", {}, None, f"jobs/{CURRENT} is not a job record mlfix wrote "
                         f"({problem}); it was ignored and no process was signalled")
    folder = jobs_dir(project_dir)
    log_path = folder / record["log"]
    exit_info = _read_json(folder / record["exit"])
    if exit_info is None and _alive(record, Path(project_dir)):
        return JobStatus("running", record, log_tail=read_log_tail(log_path, tail_bytes))
    if exit_info is None:
        # Re-check: the wrapper may have written the exit file between the two reads.
        exit_info = _read_json(folder / record["exit"])
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
    pid = status.record["pid"]
    # Remember the request: a job stopped before its wrapper set up its handler leaves no exit file.
    write_text_atomic(jobs_dir(project_dir) / f"{status.record['job_id']}.stop", str(time.time()))
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) != pid or not _ours(status.record, Path(project_dir)):
            return False  # not the session leader start_job made (or no longer ours): never signalled
        os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
    if force:  # the wrapper dies too and cannot write the exit file: write it for it
        write_json_atomic(jobs_dir(project_dir) / status.record["exit"],
                          {"returncode": -signal.SIGKILL, "stopped": True, "finished": time.time()})
    return True


def stop_requested_at(project_dir: str | os.PathLike) -> float | None:
    """When :func:`stop_job` was last asked to stop the current job (epoch seconds), else None."""
    record = current_job(project_dir)
    if not record or record_problem(record):
        return None
    try:
        return float((jobs_dir(project_dir) / f"{record['job_id']}.stop").read_text())
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
