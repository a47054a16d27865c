"""`distribmail serve` as a user runs it: gunicorn, the embedded database, the printed token."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.payloads import event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served():
    """`distribmail serve` on the embedded default, with no credential configured.

    The data folder is not under pytest's tmp_path: run as root, the embedded server runs
    as its own system user and needs to traverse every parent folder, and pytest resets
    its own base folder to 0700 whenever a pytest session starts.
    """
    tmp_path = Path(tempfile.mkdtemp(prefix="dm-serve-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBMAIL_")}
    env["DISTRIBMAIL_DATA_DIR"] = str(tmp_path / "var")
    env["DISTRIBMAIL_MAX_BODY"] = "4KiB"
    process = subprocess.Popen(
        [sys.executable, "-m", "distribmail.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if "Booting worker" in line or process.poll() is not None:
            break
    assert process.poll() is None, "distribmail serve did not start:\n" + "".join(output)
    yield process, port, "".join(output), tmp_path / "var"
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # lets serve stop its embedded database
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(tmp_path, ignore_errors=True)


def request(port, method, path, body=None, headers=None, chunks=None):
    deadline = time.monotonic() + 20
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            if chunks is not None:
                conn.putrequest(method, path)
                for key, value in (headers or {}).items():
                    conn.putheader(key, value)
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for chunk in chunks:
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.send(b"0\r\n\r\n")
            else:
                conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            conn.close()


def test_serve_runs_on_the_embedded_database_and_prints_the_token(served):
    process, port, output, data_dir = served
    token = (data_dir / "webhook-token").read_text().strip()
    assert f"http://localhost:{port}/webhooks/brevo" in output
    assert f"webhook token {token}" in output

    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, body = request(port, "POST", "/webhooks/brevo", json.dumps(event()), auth)
    assert (status, json.loads(body)) == (200, {"received": 1, "stored": 1, "duplicates": 0})
    status, body = request(port, "POST", "/webhooks/brevo", json.dumps(event()), auth)
    assert json.loads(body)["duplicates"] == 1
    assert request(port, "POST", "/webhooks/brevo", b"{}", {})[0] == 401
    assert request(port, "GET", "/readyz")[0] == 200

    # A chunked body has no Content-Length: the limit must hold all the same.
    status, body = request(port, "POST", "/webhooks/brevo", headers=auth, chunks=[b" " * 5000])
    assert status == 413


def test_serve_stops_the_embedded_database_on_exit(served):
    process, port, _, data_dir = served
    assert request(port, "GET", "/healthz")[0] == 200
    pgdata = str((data_dir / "postgres").resolve())

    def servers():
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] == "postgres" and pgdata in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        return found

    assert servers()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 20
    while servers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert servers() == []


def test_a_second_start_reuses_the_data_folder_and_its_token(served):
    process, port, output, data_dir = served
    first = re.search(r"distribmail: webhook token (\S+)", output).group(1)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBMAIL_")}
    env["DISTRIBMAIL_DATA_DIR"] = str(data_dir)
    again = subprocess.run(
        [sys.executable, "-m", "distribmail.cli", "db", "init"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "schema applied" in again.stdout
    assert (data_dir / "webhook-token").read_text().strip() == first


def test_the_request_lines_written_in_the_background_are_all_out_after_a_stop(served):
    # serve's workers write INFO lines from a thread, a tenth of a second at a time
    # (distribmail.log_writer): a graceful stop must not lose the last ones.
    process, port, _, data_dir = served
    token = (data_dir / "webhook-token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ids = [f"serve-test-{n:04d}" for n in range(20)]
    for request_id in ids:
        headers = {**auth, "X-Request-Id": request_id}
        status, _ = request(port, "POST", "/webhooks/brevo", json.dumps(event()), headers)
        assert status == 200
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    logged = [
        json.loads(line).get("request_id")
        for line in output.splitlines()
        if line.startswith("{") and '"distribmail.access"' in line
    ]
    assert sorted(i for i in logged if i in ids) == ids
