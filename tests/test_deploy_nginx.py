"""deploy/nginx/distribmail.conf in front of `distribmail serve`, both real processes.

nginx listens with TLS on 127.0.0.1 (a throwaway certificate), gunicorn behind it on
another loopback port. Linux lets a socket bind any 127.x address as its source, so the
test is three clients: 127.0.0.2 (in the webhook allow-list and the private networks),
127.0.0.3 (in neither), and nginx itself (127.0.0.1, the only trusted proxy). The site file
is used as written, with only addresses, ports and paths replaced (each replacement must
match, so the test breaks when the file changes shape).
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.payloads import event

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "deploy" / "nginx" / "distribmail.conf"
WEBHOOK_TOKEN = "webhook-token-for-nginx-test"
API_TOKEN = "api-token-for-nginx-test"
ALLOWED, OTHER = "127.0.0.2", "127.0.0.3"

NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install -y nginx; .ci/run does it)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the cryptography package, else openssl)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def site_for_test(folder: Path, port: int, plain_port: int, app_port: int) -> str:
    """The deployed site with this test's addresses, ports and paths."""
    cert, key = make_certificate(folder)
    allow = folder / "distribmail-allow.conf"
    allow.write_text(f"allow {ALLOWED};\n")
    replacements = [
        (r"listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;", 1),
        (r"\n\s*listen \[::\]:443 ssl http2;", "", 1),
        (r"listen 80;", f"listen 127.0.0.1:{plain_port};", 1),
        (r"\n\s*listen \[::\]:80;", "", 1),
        (r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{app_port};", 1),
        (r"/etc/letsencrypt/live/mail\.example\.com/fullchain\.pem", str(cert), 1),
        (r"/etc/letsencrypt/live/mail\.example\.com/privkey\.pem", str(key), 1),
        (r"/etc/nginx/distribmail-allow\.conf", str(allow), 2),
        (r"/var/log/nginx/", f"{folder}/", 3),
    ]
    site = SITE.read_text()
    for pattern, replacement, expected in replacements:
        site, count = re.subn(pattern, replacement, site)
        assert count == expected, f"{pattern!r} matched {count} time(s) in {SITE}"
    return site


def nginx_conf(folder: Path, site: str) -> Path:
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""
error_log {folder}/error.log info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    {site}
}}
"""
    )
    return conf


def wait_for(port: int, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not listen on {port}:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Stack:
    port: int
    tls: ssl.SSLContext
    folder: Path
    app_log: Path

    def request(
        self,
        source: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.tls, timeout=30, source_address=(source, 0)
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


@functools.cache
def serve_takes_a_config_file() -> bool:
    usage = subprocess.run(
        [sys.executable, "-m", "distribmail.cli", "serve", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return "--config" in usage.stdout


@pytest.fixture
def stack(database_url: str) -> Iterator[Stack]:
    if not serve_takes_a_config_file():
        pytest.skip("distribmail serve has no --config option yet (issue 7's serve.py edit)")
    # Not under pytest's tmp_path: nginx's workers (user www-data when run as root) must
    # read the certificate and write the temp folders; pytest makes its base folder 0700.
    folder = Path(tempfile.mkdtemp(prefix="dm-nginx-"))
    folder.chmod(0o755)
    app_port, port, plain_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBMAIL_")}
    env.update(
        DISTRIBMAIL_DATABASE_URL=database_url,
        DISTRIBMAIL_DATA_DIR=str(folder / "data"),
        DISTRIBMAIL_WEBHOOK_TOKENS=WEBHOOK_TOKEN,
        DISTRIBMAIL_API_TOKENS=API_TOKEN,
        DISTRIBMAIL_TRUSTED_PROXIES="127.0.0.1/32",
        DISTRIBMAIL_WEBHOOK_ALLOW_CIDRS=f"{ALLOWED}/32",
        DISTRIBMAIL_POOL_SIZE="2",
        DISTRIBMAIL_WORKERS="2",
        DISTRIBMAIL_THREADS="4",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    app_log = folder / "serve.log"
    with app_log.open("w") as out:
        app = subprocess.Popen(
            [sys.executable, "-m", "distribmail.cli", "serve", "--port", str(app_port),
             "--config", str(REPO / "deploy" / "gunicorn.conf.py")],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    conf = nginx_conf(folder, site_for_test(folder, port, plain_port, app_port))
    nginx_log = folder / "nginx.out"
    with nginx_log.open("w") as out:
        nginx = subprocess.Popen(
            [NGINX or "nginx", "-p", str(folder), "-c", str(conf),
             "-g", f"daemon off; pid {folder}/nginx.pid;"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(app_port, "distribmail serve", app, app_log)
        wait_for(port, "nginx", nginx, nginx_log)
        tls = ssl.create_default_context(cafile=str(folder / "cert.pem"))
        yield Stack(port, tls, folder, app_log)
    finally:
        stop(nginx)
        stop(app)
        shutil.rmtree(folder, ignore_errors=True)


def webhook_headers(**extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {WEBHOOK_TOKEN}",
        "Content-Type": "application/json",
        **extra,
    }


def test_a_webhook_through_tls_is_stored(stack, db):
    body = json.dumps(event(message_id="<nginx-1@example.com>")).encode()
    status, headers, answer = stack.request(ALLOWED, "POST", "/webhooks/brevo", body,
                                            webhook_headers())  # fmt: skip
    assert (status, json.loads(answer)) == (200, {"received": 1, "stored": 1, "duplicates": 0})
    # nginx's request id, echoed by the app: one id in both logs.
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
    rows = db.execute(
        "SELECT source, recipient FROM events WHERE message_id = %s", ("nginx-1@example.com",)
    ).fetchall()
    assert len(rows) == 1


@pytest.mark.parametrize(
    "forwarded_for",
    [None, ALLOWED, f"{ALLOWED}, {ALLOWED}"],
    ids=["no-header", "forged-allowed-address", "forged-chain"],
)
def test_the_allow_list_sees_the_real_client_through_nginx(stack, db, forwarded_for):
    extra = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    body = json.dumps(event(message_id="<nginx-2@example.com>")).encode()
    status, _, answer = stack.request(OTHER, "POST", "/webhooks/brevo", body,
                                      webhook_headers(**extra))  # fmt: skip
    assert status == 403, answer
    assert OTHER.encode() in answer  # the app names the address it saw
    count = db.execute(
        "SELECT count(*) FROM events WHERE message_id = %s", ("nginx-2@example.com",)
    ).fetchone()
    assert count == (0,)


def test_an_oversize_body_is_refused_by_nginx(stack):
    body = b" " * (10 * 1024 * 1024 + 1)
    status, headers, answer = stack.request(ALLOWED, "POST", "/webhooks/brevo", body,
                                            webhook_headers())  # fmt: skip
    assert status == 413
    assert b"nginx" in answer  # nginx's own page: the body never reached gunicorn
    assert "X-Request-Id" not in headers


@pytest.mark.parametrize("path", ["/api/statuses", "/metrics", "/healthz", "/"])
def test_private_paths_are_denied_to_other_networks_by_nginx(stack, path):
    status, headers, answer = stack.request(
        OTHER, "GET", path, headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    assert status == 403
    assert b"nginx" in answer and "X-Request-Id" not in headers


def test_private_paths_answer_our_network_with_a_token(stack):
    token = {"Authorization": f"Bearer {API_TOKEN}"}
    assert stack.request(ALLOWED, "GET", "/api/statuses", headers=token)[0] == 200
    assert stack.request(ALLOWED, "GET", "/api/statuses")[0] == 401  # the app's own check
    body = json.dumps(event(message_id="<nginx-3@example.com>")).encode()
    assert stack.request(ALLOWED, "POST", "/webhooks/brevo", body, webhook_headers())[0] == 200
    status, _, page = stack.request(ALLOWED, "GET", "/metrics", headers=token)
    assert status == 200
    text = page.decode()
    assert re.search(
        r'distribmail_webhook_events_total\{event="delivered",outcome="stored",'
        r'provider="brevo"\} 1\.0',
        text,
    ), text


def test_the_screen_cookie_is_secure_behind_nginx_tls(stack):
    # nginx terminates TLS and says so in X-Forwarded-Proto; the app trusts it from
    # 127.0.0.1 (DISTRIBMAIL_TRUSTED_PROXIES), so the session cookie only goes back on https.
    body = urllib.parse.urlencode({"password": API_TOKEN}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, headers, _ = stack.request(ALLOWED, "POST", "/login", body, form)
    assert status == 302
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("distribmail_session=")
    assert "; Secure" in cookie
