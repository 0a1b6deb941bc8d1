"""The reverse-proxy configurations mlfix ships (deploy/Caddyfile, deploy/nginx.conf) and docs/team.md.

- The blocks docs/team.md shows are the shipped files, byte for byte.
- Each file sets every header Streamlit cannot set itself (CSP, X-Frame-Options, nosniff, Referrer-Policy,
  HSTS), on every response, and closes Streamlit's internal routes (``/_stcore/metrics``, the agent API,
  the script health check), while every route the installed Streamlit frontend uses stays open.
- Basic syntax always (braces, quotes, statements); ``caddy adapt`` and ``nginx -t`` when installed.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "team.md"
CADDY = ROOT / "deploy" / "Caddyfile"
NGINX = ROOT / "deploy" / "nginx.conf"
STREAMLIT_JS = Path(__import__("streamlit").__file__).parent / "static" / "static" / "js"

REQUIRED_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
# What Streamlit's frontend needs (inline, eval'd and blob: scripts, inline styles, icons from Google's
# font server) and what keeps the rest out; tests/service/test_deploy_browser.py checks it in Chromium.
REQUIRED_CSP = {
    "default-src": {"'self'"},
    "script-src": {"'self'", "'unsafe-inline'", "'unsafe-eval'", "blob:"},  # blob: the grid's module
    "img-src": {"'self'", "data:", "blob:", "https://fonts.gstatic.com"},  # Streamlit's Material icons
    "style-src": {"'self'", "'unsafe-inline'"},
    "connect-src": {"'self'"},  # the websocket: CSP Level 3 browsers match wss:// to the same host
    "frame-ancestors": {"'none'"},
    "object-src": {"'none'"},
    "base-uri": {"'self'"},
    "form-action": {"'self'"},
}
CLOSED = ["/_stcore/metrics", "/_stcore/metrics/", "/_stcore/agent/interact", "/_stcore/agent/mcp",
          "/_stcore/agent/openapi.json", "/_stcore/script-health-check"]
OPEN = ["/", "/review", "/export?project=x", "/app/static/mlfix-thumbs/k/a.png", "/media/abc.png",
        "/auth/login", "/oauth2callback", "/static/js/index.js", "/component/x/index.html"]


def fenced(language: str) -> list[str]:
    """The ```language blocks of docs/team.md, as written."""
    return re.findall(rf"^```{language}\n(.*?)^```$", DOCS.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)


def caddy_headers(text: str) -> dict[str, str]:
    block = re.search(r"^\theader \{\n(.*?)^\t\}", text, re.DOTALL | re.MULTILINE).group(1)
    return dict(re.findall(r'^\t\t([A-Za-z-]+) "([^"]*)"$', block, re.MULTILINE))


def nginx_headers(text: str) -> dict[str, str]:
    return dict(re.findall(r'^    add_header ([A-Za-z-]+) "([^"]*)" always;$', text, re.MULTILINE))


def caddy_closed(text: str, path: str) -> bool:
    """Whether the Caddyfile answers ``path`` itself with 404 (its @closed path matcher; * is a glob)."""
    patterns = re.search(r"^\t@closed path (.+)$", text, re.MULTILINE).group(1).split()
    assert re.search(r"^\trespond @closed 404$", text, re.MULTILINE)
    return any(fnmatch.fnmatchcase(path.split("?")[0].lower(), p.lower()) for p in patterns)


def nginx_closed(text: str, path: str) -> bool:
    """Whether nginx answers ``path`` with 404 (a ``location ^~ PREFIX { return 404; }``)."""
    prefixes = re.findall(r"^    location \^~ (\S+) \{ return 404; \}$", text, re.MULTILINE)
    return any(path.split("?")[0].startswith(p) for p in prefixes)


def csp(value: str) -> dict[str, set[str]]:
    directives = [d.split() for d in value.split(";") if d.strip()]
    return {d[0]: set(d[1:]) for d in directives}


CONFIGS = [pytest.param(CADDY, caddy_headers, caddy_closed, id="Caddyfile"),
           pytest.param(NGINX, nginx_headers, nginx_closed, id="nginx.conf")]


def test_the_docs_show_the_shipped_files_byte_for_byte():
    # (the blocks after the first are section 5's, for several servers: tests/service/test_deploy_servers.py)
    assert fenced("caddyfile")[0] == CADDY.read_text(encoding="utf-8")
    assert fenced("nginx")[0] == NGINX.read_text(encoding="utf-8")


@pytest.mark.parametrize("path, headers, closed", CONFIGS)
def test_every_required_header_is_set(path, headers, closed):
    found = headers(path.read_text())
    assert {name: found.get(name) for name in REQUIRED_HEADERS} == REQUIRED_HEADERS
    policy = csp(found["Content-Security-Policy"])
    for directive, sources in REQUIRED_CSP.items():
        assert policy.get(directive) == sources, directive
    every_source = set().union(*policy.values()) - {"https://fonts.gstatic.com"}
    assert not [s for s in every_source if s == "*" or "://" in s or s in ("http:", "https:", "ws:", "wss:")]


def test_the_two_files_send_the_same_headers():
    assert caddy_headers(CADDY.read_text()) == nginx_headers(NGINX.read_text())


@pytest.mark.parametrize("path, headers, closed", CONFIGS)
def test_internal_routes_are_closed_and_the_apps_stay_open(path, headers, closed):
    from streamlit.web.server.starlette import starlette_agent_routes, starlette_routes

    text = path.read_text()
    internal = [starlette_routes.ROUTE_METRICS, starlette_routes.ROUTE_SCRIPT_HEALTH,
                starlette_agent_routes._ROUTE_AGENT_INTERACT, starlette_agent_routes._ROUTE_AGENT_MCP,
                starlette_agent_routes._ROUTE_AGENT_SCHEMA]
    assert [p for p in CLOSED + [f"/{r}" for r in internal] if not closed(text, p)] == []
    assert [p for p in OPEN if closed(text, p)] == []


@pytest.mark.parametrize("path, headers, closed", CONFIGS)
def test_no_route_the_streamlit_frontend_calls_is_closed(path, headers, closed):
    bundle = "".join(js.read_text(encoding="utf-8", errors="replace") for js in STREAMLIT_JS.glob("*.js"))
    used = sorted(set(re.findall(r"_stcore/[A-Za-z0-9_-]+", bundle)))
    assert {"_stcore/stream", "_stcore/health", "_stcore/host-config"} <= set(used)
    assert [r for r in used if closed(path.read_text(), f"/{r}") or closed(path.read_text(), f"/{r}/x")] == []


def test_headers_reach_every_response():
    nginx = NGINX.read_text()
    # an add_header inside a location would replace the server's list there: there is none
    assert re.findall(r"^ {8,}add_header", nginx, re.MULTILINE) == []
    assert len(re.findall(r"^\s*add_header ", nginx, re.MULTILINE)) == len(REQUIRED_HEADERS) + 1  # + the CSP
    assert "\n    server_tokens off;\n" in nginx
    caddy = CADDY.read_text()
    assert caddy.count("\theader {") == 1 and "handle" not in caddy  # site-wide, for the 404s too


# ------------------------------------------------------------------------------------ syntax


def _strip_comments(text: str) -> str:
    """Each line up to its first ``#`` outside double quotes (both formats' comment rule)."""
    lines = []
    for line in text.splitlines():
        quoted, end = False, len(line)
        for at, char in enumerate(line):
            quoted = quoted != (char == '"')
            if char == "#" and not quoted:
                end = at
                break
        lines.append(line[:end])
    return "\n".join(lines)


@pytest.mark.parametrize("path", [CADDY, NGINX], ids=["Caddyfile", "nginx.conf"])
def test_syntax_basics(path):
    code = _strip_comments(path.read_text())
    depth = 0
    for number, line in enumerate(code.splitlines(), 1):
        assert line.count('"') % 2 == 0, f"{path.name}:{number}: unbalanced quotes"
        depth += line.count("{") - line.count("}")
        assert depth >= 0, f"{path.name}:{number}: a }} without its {{"
        if path is NGINX and line.strip() and not line.rstrip().endswith(("{", "}", ";")):
            assert False, f"nginx.conf:{number}: a statement without ';'"
    assert depth == 0
    assert "\t" not in path.read_text() if path is NGINX else "    " not in code  # one indentation style


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")
def test_caddy_reads_the_caddyfile():
    result = subprocess.run(["caddy", "adapt", "--adapter", "caddyfile", "--config", str(CADDY)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("openssl") is None,
                    reason="nginx (and openssl, for a throwaway certificate) is not installed")
def test_nginx_accepts_the_configuration(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=review.example.org", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    site = NGINX.read_text().replace("/etc/letsencrypt/live/review.example.org/fullchain.pem", str(cert)) \
        .replace("/etc/letsencrypt/live/review.example.org/privkey.pem", str(key))
    (tmp_path / "mlfix.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path};\n    include {tmp_path}/mlfix.conf;\n}}\n")
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
