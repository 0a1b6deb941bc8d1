"""The deployment check of ``mlfix serve`` (and ``Project.serve``): refuse what would expose a session.

Open mode (no sign-in) on an address the network reaches made every visitor an admin, silently.
Now it is refused unless ``--insecure`` is given (then a loud warning), an unusable sign-in setting
stops the start, and the start says what protects the session: sign-in mode, roles, database (no
password), TLS, limits.
"""

from __future__ import annotations

import dataclasses
import subprocess

import pytest

from mlfix.cli import main
from mlfix.errors import AuthConfigError, SettingsError, UnsafeServeError
from mlfix.limits import Limits
from mlfix.project import Project
from mlfix.service import server
from mlfix.service.server import app_secrets, check_deployment, describe_database, is_loopback

ADMIN, REVIEWER = "admin-token-0123456789", "reviewer-token-0123456789"
TOKENS = {"MLFIX_ADMIN_TOKEN": ADMIN, "MLFIX_REVIEWER_TOKEN": REVIEWER}
OIDC = {"auth": {"client_id": "c"}, "mlfix": {"admins": ["ann@x.org", "bo@x.org"], "reviewers": ["*@x.org"]}}


@pytest.mark.parametrize("address, local", [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False), ("192.168.1.2", False),
    ("no-such-host.invalid", False),
])
def test_loopback_addresses(address, local):
    assert is_loopback(address) is local


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.0.0.5", ""])
def test_open_mode_on_the_network_is_refused(address, tmp_path):
    with pytest.raises(UnsafeServeError, match=f"refusing to serve {address}:8501 without sign-in: everyone who "
                                               "reaches it would be admin. Set MLFIX_ADMIN_TOKEN"):
        check_deployment(address, 8501, tmp_path, {}, secrets={})


def test_insecure_serves_it_with_a_loud_warning(tmp_path):
    lines = check_deployment("0.0.0.0", 8501, tmp_path, {}, insecure=True, secrets={})
    assert "  sign-in   open" in lines and "  roles     everyone is admin (nobody signs in)" in lines
    assert lines[-1] == ("WARNING: --insecure: no sign-in on 0.0.0.0:8501; everyone who reaches it is admin "
                         "(creates projects, trains, exports, decides)")


def test_open_mode_on_loopback_needs_no_flag(tmp_path):
    lines = check_deployment("127.0.0.1", 8501, tmp_path, {}, secrets={})
    assert lines[1] == "  address   127.0.0.1:8501 (this machine only)"
    assert not [line for line in lines if line.startswith("WARNING")]


def test_the_report_says_what_protects_the_session(tmp_path):
    lines = check_deployment("127.0.0.1", 8600, tmp_path, TOKENS, secrets={})
    assert lines == [
        "mlfix serve: what protects this session",
        "  address   127.0.0.1:8600 (this machine only)",
        "  sign-in   token",
        "  roles     admin token set, reviewer token set",
        f"  database  sqlite {tmp_path.resolve() / 'reviews.db'} (this machine only)",
        f"  TLS       expected in front (reverse proxy: {server.PROXY_DOCS})",
        "  limits    " + ", ".join(f"{f.name}={getattr(Limits(), f.name)}" for f in dataclasses.fields(Limits)),
    ]
    assert ADMIN not in "\n".join(lines) and REVIEWER not in "\n".join(lines)


def test_tokens_on_plain_http_to_the_network_are_a_warning(tmp_path):
    lines = check_deployment("0.0.0.0", 8501, tmp_path, TOKENS, secrets={})
    assert lines[-1].startswith("WARNING: plain HTTP on 0.0.0.0:8501: tokens and decisions cross the network")
    with_tls = check_deployment("0.0.0.0", 8501, tmp_path, {**TOKENS, server.ENV_SSL_CERT: "/etc/mlfix/cert.pem"},
                                secrets={})
    assert "  TLS       by Streamlit itself (/etc/mlfix/cert.pem)" in with_tls
    assert not [line for line in with_tls if line.startswith("WARNING")]


def test_oidc_roles_are_counted(tmp_path):
    lines = check_deployment("127.0.0.1", 8501, tmp_path, {}, secrets=OIDC)
    assert "  sign-in   oidc" in lines and "  roles     2 admin address(es), 1 reviewer pattern(s)" in lines
    anyone = check_deployment("127.0.0.1", 8501, tmp_path, {}, secrets={"auth": {"client_id": "c"}})
    assert "  roles     0 admin address(es), any account the identity provider lets in may review" in anyone


@pytest.mark.parametrize("env, error, message", [
    ({"MLFIX_ADMIN_TOKEN": ""}, AuthConfigError, "MLFIX_ADMIN_TOKEN is set but empty"),
    ({"MLFIX_ADMIN_TOKEN": "a" * 20}, AuthConfigError, "too easy to guess"),
    ({**TOKENS, "MLFIX_MAX_ACTIONS_PER_BATCH": "lots"}, SettingsError, "MLFIX_MAX_ACTIONS_PER_BATCH must be"),
])
def test_unusable_settings_stop_the_start_even_on_loopback(env, error, message, tmp_path):
    with pytest.raises(error, match=message):
        check_deployment("127.0.0.1", 8501, tmp_path, env, secrets={})


def test_limits_in_effect_are_the_environments(tmp_path):
    lines = check_deployment("127.0.0.1", 8501, tmp_path, {"MLFIX_MAX_ACTIONS_PER_BATCH": "50"}, secrets={})
    assert "actions_per_batch=50," in lines[-1]


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://mlfix:s3cret-pw@db.example.org:5432/mlfix_photos",
     "postgresql on db.example.org:5432/mlfix_photos as mlfix"),
    ("postgresql+psycopg://mlfix@dbhost/mlfix?options=-csearch_path%3Dphotos", "postgresql on dbhost/mlfix as mlfix"),
    ("sqlite:////srv/team/reviews.db", "sqlite /srv/team/reviews.db"),
    ("not a url", "MLFIX_DB_URL is not a database URL (the check before start will say why)"),
])
def test_the_database_is_named_without_its_password(url, shown, tmp_path):
    assert describe_database(tmp_path, {"MLFIX_DB_URL": url}) == shown
    lines = check_deployment("127.0.0.1", 8501, tmp_path, {"MLFIX_DB_URL": url}, secrets={})
    assert f"  database  {shown}" in lines and "s3cret" not in "\n".join(lines)


def test_the_secrets_files_are_read_as_streamlit_reads_them(tmp_path):
    home, root = tmp_path / "home", tmp_path / "repo"
    (home / ".streamlit").mkdir(parents=True)
    (root / ".streamlit").mkdir(parents=True)
    assert app_secrets(root, home) == {}
    (home / ".streamlit" / "secrets.toml").write_text('[mlfix]\nadmin_token = ""\n[other]\nx = 1\n')
    (root / ".streamlit" / "secrets.toml").write_text('[mlfix]\nadmin_token = "from-the-repo-0123456789"\n')
    assert app_secrets(root, home) == {"mlfix": {"admin_token": "from-the-repo-0123456789"}, "other": {"x": 1}}
    (root / ".streamlit" / "secrets.toml").write_text("[mlfix\n")
    with pytest.raises(AuthConfigError, match="cannot read the secrets file .*repo/.streamlit/secrets.toml"):
        app_secrets(root, home)


# ------------------------------------------------------------------------------ the command and Project.serve


@pytest.fixture
def project(tmp_path, monkeypatch):
    from tests.conftest import write_image_folder

    for name in ("MLFIX_ADMIN_TOKEN", "MLFIX_REVIEWER_TOKEN", "MLFIX_ADMINS", "MLFIX_REVIEWERS", "MLFIX_DB_URL",
                 server.ENV_SSL_CERT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(server, "app_secrets", lambda *a, **k: {})  # not this machine's secrets files
    return Project.create(tmp_path / "project", write_image_folder(tmp_path / "images", per_class=2))


@pytest.fixture
def started(monkeypatch):
    """The command lines ``mlfix serve`` would have run (nothing is started)."""
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, **kwargs: calls.append(command) or 0)
    return calls


def test_the_command_refuses_open_mode_on_the_network(project, started, capsys):
    assert main(["serve", "--project", str(project.dir), "--address", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlfix serve: refusing to serve 0.0.0.0:8501 without sign-in") and "--insecure" in err
    assert started == []


def test_the_command_with_insecure_starts_and_warns(project, started, capsys):
    assert main(["serve", "--project", str(project.dir), "--address", "0.0.0.0", "--insecure"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "mlfix serve: what protects this session"
    assert err[-1].startswith("WARNING: --insecure: no sign-in on 0.0.0.0:8501")
    [command] = started
    assert command[command.index("--server.address") + 1] == "0.0.0.0"


def test_the_command_refuses_an_empty_token(project, started, capsys, monkeypatch):
    monkeypatch.setenv("MLFIX_ADMIN_TOKEN", "")
    assert main(["serve", "--project", str(project.dir)]) == 2
    assert capsys.readouterr().err.startswith("mlfix serve: MLFIX_ADMIN_TOKEN is set but empty")
    assert started == []


def test_the_command_with_tokens_prints_the_report_and_starts(project, started, capsys, monkeypatch):
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--project", str(project.dir), "--address", "127.0.0.1", "--port", "8600"]) == 0
    err = capsys.readouterr().err
    assert "  sign-in   token\n" in err and "  TLS       expected in front" in err and ADMIN not in err
    assert len(started) == 1


def test_project_serve_refuses_open_mode_on_the_network(project, monkeypatch):
    def no_start(*args, **kwargs):
        raise AssertionError("the app must not start")

    monkeypatch.setattr(server, "start_app", no_start)
    with pytest.raises(UnsafeServeError, match="refusing to serve 0.0.0.0"):
        project.serve(address="0.0.0.0", port=8599)


def test_project_serve_insecure_warns_and_logs_the_report(project, monkeypatch):
    class Started(Exception):
        pass

    def start(*args, **kwargs):
        raise Started

    monkeypatch.setattr(server, "start_app", start)
    with pytest.warns(RuntimeWarning, match="--insecure: no sign-in on 0.0.0.0:8599"), pytest.raises(Started):
        project.serve(address="0.0.0.0", port=8599, insecure=True)
    log = (project.dir / "serve.log").read_text()
    assert log.startswith("mlfix serve: what protects this session\n") and "  sign-in   open\n" in log
