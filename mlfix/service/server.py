"""Starting the app on a project: its command line, a free port, and waiting until it answers.

One place for what ``mlfix serve``, ``Project.serve()``, the browser tests and the load benchmarks
all need. The server runs from the repository root, so ``.streamlit/config.toml`` applies whatever
the caller's working folder.

Example:
    >>> command = app_command("demo-project", 8501)
    >>> command[1:4], command[-2:]
    (['-m', 'streamlit', 'run'], ['--project', 'demo-project'])

Starting the server binds a port and takes seconds (the browser tests do it), so this one is shown only:
    >>> with running_app("demo-project") as url:     # doctest: +SKIP
    ...     print(url)                                 # http://127.0.0.1:PORT
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

APP_ROOT = Path(__file__).resolve().parents[2]  # the repository root (app.py, .streamlit/)


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_command(project_dir: str | os.PathLike, port: int, address: str = "localhost") -> list[str]:
    """The ``streamlit run app.py`` command line for a project."""
    return [sys.executable, "-m", "streamlit", "run", str(APP_ROOT / "app.py"), "--server.port", str(port),
            "--server.address", address, "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none",
            # the review grid loads thumbnails from app/static/ (any working folder, any config)
            "--server.enableStaticServing", "true", "--", "--project", str(project_dir)]


def start_app(project_dir: str | os.PathLike, port: int, address: str = "localhost",
              env: dict | None = None, log: IO | int | None = None, **popen) -> subprocess.Popen:
    """Start the app in a child process (output to ``log``, else discarded)."""
    command = app_command(project_dir, port, address)
    output = subprocess.DEVNULL if log is None else log
    return subprocess.Popen(command, cwd=APP_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, **popen)


def wait_until_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 90) -> None:
    """Poll the server's health route; raise if the process dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s") from None
            time.sleep(0.3)


def stop_app(process: subprocess.Popen, grace: float = 10) -> None:
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_app(project_dir: str | os.PathLike, port: int | None = None, env: dict | None = None,
                log: IO | int | None = None, timeout: float = 90) -> Iterator[str]:
    """The app on ``project_dir`` at ``http://127.0.0.1:PORT`` for the ``with`` block; stopped after."""
    port = port or free_port()
    process = start_app(project_dir, port, "127.0.0.1", env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, timeout)
        yield url
    finally:
        stop_app(process)
