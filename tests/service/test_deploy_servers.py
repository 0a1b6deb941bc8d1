"""docs/team.md, section 5 (several app servers): its sticky-session blocks for Caddy and nginx, put into
the shipped single-server files as the page says, are accepted by ``caddy adapt`` and ``nginx -t``;
and nginx, run with two stand-in upstreams, gives a first visit the cookie and then keeps every
request with it on one server, while different cookies spread over the servers.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mlfix.service.server import free_port
from tests.service.test_deploy_configs import CADDY, NGINX, fenced

SINGLE_PROXY_CADDY = "\treverse_proxy 127.0.0.1:8501\n"
SINGLE_PROXY_NGINX = "        proxy_pass http://127.0.0.1:8501;\n"
HEADERS_END = '    add_header Permissions-Policy "camera=(), microphone=(), geolocation=()" always;\n'
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("openssl") is None,
                                 reason="nginx (and openssl, for a throwaway certificate) is not installed")


def caddy_servers() -> str:
    """deploy/Caddyfile with its ``reverse_proxy`` line replaced by the page's block for N servers."""
    blocks = fenced("caddyfile")
    assert len(blocks) == 2 and blocks[1].lstrip("\t# ").startswith("Several mlfix servers")
    text = CADDY.read_text(encoding="utf-8")
    assert text.count(SINGLE_PROXY_CADDY) == 1
    return text.replace(SINGLE_PROXY_CADDY, blocks[1])


def nginx_servers(upstreams: list[str] | None = None) -> str:
    """deploy/nginx.conf with the page's upstream block above the first server, its cookie line with the
    other headers and its proxy_pass in ``location /`` (``upstreams``: other server addresses)."""
    blocks = fenced("nginx")
    assert len(blocks) == 3
    top, (cookie, proxy) = blocks[1], blocks[2].splitlines(keepends=True)
    assert cookie.lstrip().startswith("add_header Set-Cookie") and proxy.strip().startswith("proxy_pass")
    if upstreams is not None:
        lines = [line for line in top.splitlines(keepends=True) if not line.lstrip().startswith("server ")]
        at = lines.index("}\n", lines.index("upstream mlfix_servers {\n"))
        top = "".join(lines[:at] + [f"    server {u} max_fails=3 fail_timeout=30s;\n" for u in upstreams] + lines[at:])
    text = NGINX.read_text(encoding="utf-8")
    assert text.count(SINGLE_PROXY_NGINX) == 1 and text.count(HEADERS_END) == 1
    text = text.replace("server {\n", top + "server {\n", 1).replace(HEADERS_END, HEADERS_END + cookie)
    return text.replace(SINGLE_PROXY_NGINX, proxy)


def test_the_blocks_keep_the_single_server_headers_and_routes():
    from tests.service.test_deploy_configs import caddy_headers, nginx_headers

    assert caddy_headers(caddy_servers()) == caddy_headers(CADDY.read_text())
    cookie = "mlfix_server=$mlfix_server; Path=/; Secure; HttpOnly; SameSite=Lax"
    assert nginx_headers(nginx_servers()) == {**nginx_headers(NGINX.read_text()), "Set-Cookie": cookie}
    assert "lb_policy cookie" in caddy_servers() and "hash $mlfix_server consistent;" in nginx_servers()
    assert 'proxy_set_header Connection "upgrade";' in nginx_servers()  # the websocket still passes


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")
def test_caddy_reads_the_several_servers_caddyfile(tmp_path):
    (tmp_path / "Caddyfile").write_text(caddy_servers())
    result = subprocess.run(["caddy", "adapt", "--adapter", "caddyfile", "--config", str(tmp_path / "Caddyfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"policy":"cookie"' in result.stdout.replace(" ", "") and "10.0.0.13:8501" in result.stdout


def _nginx_files(tmp_path: Path, site: str, listen: dict[str, int] | None = None) -> Path:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=review.example.org", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    site = site.replace("/etc/letsencrypt/live/review.example.org/fullchain.pem", str(cert)) \
        .replace("/etc/letsencrypt/live/review.example.org/privkey.pem", str(key))
    for old, port in (listen or {}).items():
        site = site.replace(f"listen {old}", f"listen 127.0.0.1:{port}")
    (tmp_path / "mlfix.conf").write_text(site)
    config = tmp_path / "nginx.conf"
    config.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                      f"http {{\n    access_log off;\n    client_body_temp_path {tmp_path};\n"
                      f"    include {tmp_path}/mlfix.conf;\n}}\n")
    return config


@needs_nginx
def test_nginx_accepts_the_several_servers_configuration(tmp_path):
    config = _nginx_files(tmp_path, nginx_servers())
    result = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _stand_in(name: str) -> http.server.ThreadingHTTPServer:
    """An upstream that answers every GET with its name."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _get(port: int, cookie: str | None = None) -> tuple[str, str | None]:
    context = ssl._create_unverified_context()  # the throwaway certificate
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    connection.request("GET", "/review", headers={"Host": "review.example.org",
                                                  **({"Cookie": f"mlfix_server={cookie}"} if cookie else {})})
    response = connection.getresponse()
    body, set_cookie = response.read().decode(), response.getheader("Set-Cookie")
    connection.close()
    assert response.status == 200, (response.status, body)
    return body, set_cookie


@needs_nginx
def test_nginx_keeps_a_browser_on_one_server_and_spreads_browsers(tmp_path):
    upstreams = [_stand_in(name) for name in ("one", "two", "three")]
    https, http_port = free_port(), free_port()
    site = nginx_servers([f"127.0.0.1:{u.server_address[1]}" for u in upstreams])
    config = _nginx_files(tmp_path, site, {"443": https, "80": http_port})
    started = subprocess.run(["nginx", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        for _ in range(100):  # the master writes its pid when it listens
            if (tmp_path / "nginx.pid").exists():
                break
            time.sleep(0.05)
        first, set_cookie = _get(https)
        assert set_cookie and set_cookie.startswith("mlfix_server=") and "Secure" in set_cookie
        key = set_cookie.split(";")[0].split("=", 1)[1]
        assert len(key) == 32  # $request_id: 32 hex digits
        again = [_get(https, key) for _ in range(6)]
        assert {body for body, _ in again} == {first}  # the same server, every time
        assert {c.split(";")[0] for _, c in again} == {f"mlfix_server={key}"}  # the cookie is kept
        spread = {_get(https, f"browser-{i}")[0] for i in range(30)}
        assert spread == {"one", "two", "three"}  # other browsers land on every server
    finally:
        pid = int((tmp_path / "nginx.pid").read_text()) if (tmp_path / "nginx.pid").exists() else None
        if pid:
            subprocess.run(["kill", "-QUIT", str(pid)], timeout=10)  # the master we started, by its pid
        for upstream in upstreams:
            upstream.shutdown()
