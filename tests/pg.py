"""A throwaway PostgreSQL server for tests and benchmarks (no system service, no fixed port).

Finds the server binaries (``$PG_BIN``, ``pg_ctl`` on PATH, or Debian's
``/usr/lib/postgresql/<version>/bin``; ``make postgres`` installs them), runs ``initdb`` in a fresh
temporary folder, starts the server on 127.0.0.1 at a free port with its unix socket in that
folder, and removes everything on stop. PostgreSQL refuses to run as root, so as root the folder is
given to the ``postgres`` user and the commands run through ``runuser``.

Pytest::

    from tests.pg import postgres_server  # noqa: F401  (a session fixture; skips when unavailable)

    def test_x(postgres_server):
        url = postgres_server.new_schema()   # an empty schema (cheap), or .new_database()

Scripts::

    with PostgresServer.start() as server:
        url = server.new_database()
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "mlfix"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries are missing or the server would not start (the message says why)."""


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl, or PostgresUnavailable."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name)
                                           if Path(p).parent.name.isdigit() else 0, reverse=True)]
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: run `make postgres` "
                              "(apt-get install postgresql) or set PG_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running server; ``new_database()`` gives each test its own empty database."""

    def __init__(self, folder: Path, bin_dir: Path, port: int, run_as: str | None):
        self.folder, self.bin_dir, self.port, self.run_as = folder, bin_dir, port, run_as
        self.durable = True
        self._admin_connection = None
        self._names = itertools.count(1)
        self.url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres"

    @classmethod
    def start(cls, durable: bool = True, timeout: float = 60) -> "PostgresServer":
        """initdb + start. ``durable=False`` turns fsync off (faster tests; not for benchmarks)."""
        bin_dir = find_bin_dir()
        run_as = None
        if os.geteuid() == 0:  # postgres will not run as root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server as")
            if not shutil.which("runuser"):
                raise PostgresUnavailable("running as root and `runuser` is missing")
            run_as = "postgres"
        # Not under pytest's tmp_path: its parents are private to root, and the server user must reach it.
        folder = Path(tempfile.mkdtemp(prefix="mlfix-pg-"))
        (folder / "sock").mkdir()
        if run_as:
            shutil.chown(folder, run_as, run_as)
            shutil.chown(folder / "sock", run_as, run_as)
        server = cls(folder, bin_dir, free_port(), run_as)
        server.durable = durable  # before _pg_start: it picks the fsync settings
        try:
            server._run("initdb", "-D", str(folder / "data"), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                        "--no-sync", timeout=timeout)
            server._pg_start(timeout)
        except PostgresUnavailable:
            server._remove()
            raise
        return server

    def _pg_start(self, timeout: float = 60) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.folder / 'sock'}"
                   f" -c max_connections=200")
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "server.log"), "-o", options,
                  "-w", "-t", str(int(timeout)), "start", timeout=timeout + 5)

    def crash(self) -> None:
        """Stop the server the way a crash would (``pg_ctl stop -m immediate``: no checkpoint, the
        next start replays the WAL). Open connections break."""
        if self._admin_connection is not None:
            self._admin_connection.close()
            self._admin_connection = None
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop", timeout=60)

    def restart(self, timeout: float = 60) -> None:
        """Start the server again on the same folder and port (after :meth:`crash`)."""
        self._pg_start(timeout)

    def _run(self, program: str, *args: str, timeout: float) -> str:
        command = [str(self.bin_dir / program), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PostgresUnavailable(f"{program} failed: {error}") from error
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"{program} exited {done.returncode}: {done.stderr.strip()[-2000:]} {tail}")
        return done.stdout

    def _admin(self):
        """One autocommit connection for CREATE DATABASE / SCHEMA, opened on first use."""
        if self._admin_connection is None:
            import psycopg

            self._admin_connection = psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER,
                                                     dbname="postgres", autocommit=True)
        return self._admin_connection

    def new_database(self) -> str:
        """Create an empty database; return its ``postgresql+psycopg://`` URL."""
        name = f"db_{next(self._names)}"
        self._admin().execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def new_schema(self) -> str:
        """Create an empty schema in the shared database; return a URL whose search_path is it.

        Much cheaper than a database (CREATE DATABASE copies a template); tables and functions
        created through the URL land in that schema.
        """
        name = f"s_{next(self._names)}"
        self._admin().execute(f'CREATE SCHEMA "{name}"')
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/postgres?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        if self._admin_connection is not None:
            self._admin_connection.close()
        try:
            # A throwaway non-durable server needs no shutdown checkpoint: its folder is removed next.
            mode = "fast" if self.durable else "immediate"
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "stop", timeout=60)
        except PostgresUnavailable:
            pass
        self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


try:
    import pytest
except ImportError:  # scripts (benchmarks) use PostgresServer without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def postgres_server():
        """A PostgreSQL server for the test session (fsync off), or a skip with the reason."""
        try:
            server = PostgresServer.start(durable=False)
        except PostgresUnavailable as error:
            pytest.skip(f"PostgreSQL unavailable: {error}")
        yield server
        server.stop()

    @pytest.fixture(scope="session")
    def postgres_url(postgres_server) -> str:
        """The URL of one database shared by the session (use postgres_server.new_database() to isolate)."""
        return postgres_server.new_database()
