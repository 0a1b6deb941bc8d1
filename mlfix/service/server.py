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
import dataclasses
import ipaddress
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Mapping

from mlfix.errors import AuthConfigError, UnsafeServeError

APP_ROOT = Path(__file__).resolve().parents[2]  # the repository root (app.py, .streamlit/)
ENV_SSL_CERT = "STREAMLIT_SERVER_SSL_CERT_FILE"
PROXY_DOCS = "docs/team.md, section 4; deploy/Caddyfile or deploy/nginx.conf"


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
              insecure: bool = False, **popen) -> AppServer:
    """Start the app on ``project_dir`` and return once it answers (raises if it never does).

    First the deployment check (:func:`check_deployment`): a non-loopback ``address`` without
    sign-in raises :class:`UnsafeServeError` unless ``insecure`` (then a ``RuntimeWarning``).
    ``log``: where its output goes: an open file, or a path (appended to, closed on stop); else
    discarded; a path log starts with what protects the session. ``popen``: passed to
    :class:`subprocess.Popen` (e.g. ``start_new_session=True``).
    """
    port = port or free_port()
    report = check_deployment(address, port, project_dir, env, insecure=insecure)
    for line in report:
        if line.startswith("WARNING"):
            warnings.warn(line, RuntimeWarning, stacklevel=2)
    handle = open(log, "ab") if isinstance(log, os.PathLike) else None
    if handle is not None:
        handle.write(("\n".join(report) + "\n").encode())
        handle.flush()
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


# ------------------------------------------------------------------------------ deployment check


def is_loopback(address: str) -> bool:
    """Whether a server bound to ``address`` is reachable from this machine only.

    >>> [is_loopback(a) for a in ("localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0", "", "10.0.0.5")]
    [True, True, True, True, False, False, False]
    """
    host = address.strip().strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    if not host:
        return False  # Streamlit listens on every interface
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        found = {info[4][0].split("%")[0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(ip).is_loopback for ip in found)


def app_secrets(root: Path = APP_ROOT, home: Path | None = None) -> dict:
    """What ``st.secrets`` holds for the app: ``~/.streamlit/secrets.toml``, then the one beside app.py.

    As Streamlit reads them (its default ``secrets.files``): a later file's top-level key wins.
    An unreadable file is an :class:`AuthConfigError` naming it.
    """
    merged: dict = {}
    for path in ((home or Path.home()) / ".streamlit" / "secrets.toml", root / ".streamlit" / "secrets.toml"):
        if not path.is_file():
            continue
        try:
            merged.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise AuthConfigError(f"cannot read the secrets file {path}: {err}") from None
    return merged


def describe_database(project_dir: str | os.PathLike, env: Mapping[str, str]) -> str:
    """Where decisions go, never with a password: ``sqlite <path>`` or ``postgresql on host:port/db``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from mlfix.review.store import ENV_DB_URL

    url = env.get(ENV_DB_URL)
    if not url:
        return f"sqlite {Path(project_dir).resolve() / 'reviews.db'} (this machine only)"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return f"{ENV_DB_URL} is not a database URL (the check before start will say why)"
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite {parsed.database}"
    where = f"{parsed.host or 'localhost'}{f':{parsed.port}' if parsed.port else ''}/{parsed.database or ''}"
    return f"{parsed.get_backend_name()} on {where} as {parsed.username or '(default user)'}"


def _roles(settings) -> str:
    if settings.mode == "open":
        return "everyone is admin (nobody signs in)"
    if settings.mode == "token":
        reviewers = "reviewer token set" if settings.reviewer_token else "no reviewer token (admins only)"
        return f"admin token set, {reviewers}"
    reviewers = (f"{len(settings.reviewers)} reviewer pattern(s)" if settings.reviewers
                 else "any account the identity provider lets in may review")
    return f"{len(settings.admins)} admin address(es), {reviewers}"


def check_deployment(address: str, port: int, project_dir: str | os.PathLike, env: Mapping[str, str] | None = None,
                     *, insecure: bool = False, secrets: Mapping | None = None) -> list[str]:
    """What protects a session about to start, as lines to print; raises if it must not start.

    Raises :class:`AuthConfigError` (unusable sign-in settings, e.g. an empty token),
    :class:`SettingsError` (a bad limit) and :class:`UnsafeServeError` (a non-loopback ``address``
    in open mode, where every visitor is admin, unless ``insecure``). ``env``: the server's
    environment (default ``os.environ``); ``secrets``: default :func:`app_secrets`. Lines starting
    with ``WARNING`` are the risks accepted.
    """
    from mlfix import limits
    from mlfix.service import auth

    env = os.environ if env is None else env
    settings = auth.load_settings(app_secrets() if secrets is None else secrets, env)
    local = is_loopback(address)
    if settings.mode == "open" and not local and not insecure:
        raise UnsafeServeError(
            f"refusing to serve {address}:{port} without sign-in: everyone who reaches it would be admin. "
            f"Set {auth.ENV_ADMIN_TOKEN} and {auth.ENV_REVIEWER_TOKEN} (docs/team.md, section 2), or serve on "
            "127.0.0.1 behind a reverse proxy, or pass --insecure on a network you trust")
    in_effect = limits.Limits.from_env(env)
    tls = (f"by Streamlit itself ({env[ENV_SSL_CERT]})" if env.get(ENV_SSL_CERT)
           else f"expected in front (reverse proxy: {PROXY_DOCS})")
    lines = ["mlfix serve: what protects this session",
             f"  address   {address}:{port} ({'this machine only' if local else 'reachable from the network'})",
             f"  sign-in   {settings.mode}",
             f"  roles     {_roles(settings)}",
             f"  database  {describe_database(project_dir, env)}",
             f"  TLS       {tls}",
             "  limits    " + ", ".join(f"{f.name}={getattr(in_effect, f.name)}"
                                     for f in dataclasses.fields(in_effect))]
    if settings.mode == "open" and not local:
        lines.append(f"WARNING: --insecure: no sign-in on {address}:{port}; everyone who reaches it is admin "
                     "(creates projects, trains, exports, decides)")
    elif not local and not env.get(ENV_SSL_CERT):
        lines.append(f"WARNING: plain HTTP on {address}:{port}: tokens and decisions cross the network "
                     f"unencrypted; serve on 127.0.0.1 behind TLS ({PROXY_DOCS})")
    return lines
