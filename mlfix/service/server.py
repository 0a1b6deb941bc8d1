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
    >>> app = serve_app("demo-project")               # doctest: +SKIP
    >>> app.url, app.running                           # doctest: +SKIP
    ('http://localhost:PORT', True)
    >>> app.stop()                                     # doctest: +SKIP
"""

from __future__ import annotations

import atexit
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


class AppServer:
    """A running app (see :func:`serve_app`): its ``url``, ``stop()``; ``with`` stops it at the end.

    ``str(app)`` is the URL. The app also stops when this Python process exits.
    """

    def __init__(self, process: subprocess.Popen, url: str, log: IO | None = None):
        self.process, self.url, self._log = process, url, log
        atexit.register(self.stop)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the app (nothing happens if it has stopped already)."""
        if self.running:
            stop_app(self.process)
        if self._log is not None:
            self._log.close()
        atexit.unregister(self.stop)

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"AppServer({self.url!r}, {'running' if self.running else 'stopped'})"


def serve_app(project_dir: str | os.PathLike, port: int | None = None, address: str = "localhost",
              env: dict | None = None, log: IO | int | os.PathLike | None = None, timeout: float = 90,
              **popen) -> AppServer:
    """Start the app on ``project_dir`` and return once it answers (raises if it never does).

    ``log``: where its output goes: an open file, or a path (appended to, closed on stop); else
    discarded. ``popen``: passed to :class:`subprocess.Popen` (e.g. ``start_new_session=True``).
    """
    port = port or free_port()
    handle = open(log, "ab") if isinstance(log, os.PathLike) else None
    process = start_app(project_dir, port, address, env=env, log=handle or log, **popen)
    url = f"http://{address}:{port}"
    local = address if address not in ("0.0.0.0", "::", "") else "127.0.0.1"  # where to poll it
    try:
        wait_until_healthy(f"http://{local}:{port}", process, timeout)
    except (RuntimeError, TimeoutError) as err:
        stop_app(process)
        if handle is not None:
            handle.close()
        hint = f": see its output in {log}" if handle is not None else ""
        raise type(err)(f"{err}{hint}") from None
    return AppServer(process, url, handle)


@contextmanager
def running_app(project_dir: str | os.PathLike, port: int | None = None, env: dict | None = None,
                log: IO | int | None = None, timeout: float = 90) -> Iterator[str]:
    """The app on ``project_dir`` at ``http://127.0.0.1:PORT`` for the ``with`` block; stopped after."""
    with serve_app(project_dir, port, "127.0.0.1", env=env, log=log, timeout=timeout) as app:
        yield app.url
