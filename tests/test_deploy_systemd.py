"""deploy/: the systemd units pass `systemd-analyze verify`, gunicorn's file says what we
mean, and the example environment is one the service accepts."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distribmail import metrics
from ingest.settings import IngestSettings
from query.settings import ReadSettings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def example_env() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / "distribmail.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_units_verify(tmp_path):
    # verify checks that ExecStart exists: point the units at this checkout's venv.
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "distribmail").exists()
    copies = []
    for unit in UNITS:
        text = unit.read_text()
        text = text.replace("/opt/distribmail/venv/bin/", f"{bin_dir}/")
        text = text.replace("/opt/distribmail/deploy/", f"{DEPLOY}/")
        text = text.replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/")
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(str(copy))
    result = subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60
    )
    # Unknown or misspelt keys are only warnings (exit 0): any line about our units fails.
    ours = [line for line in result.stderr.splitlines() if ".service" in line]
    assert result.returncode == 0 and ours == [], result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_units_are_hardened(unit):
    settings = dict(
        line.split("=", 1) for line in unit.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/distribmail",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "Restart": "on-failure",
        "User": "distribmail",
    }.items():
        assert settings.get(key) == value, key


def test_gunicorn_settings(monkeypatch):
    monkeypatch.setenv("DISTRIBMAIL_TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8")
    monkeypatch.delenv("DISTRIBMAIL_WORKERS", raising=False)
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert conf["worker_class"] == "gthread"
    assert conf["workers"] >= 2
    assert conf["timeout"] <= 20 and conf["graceful_timeout"] <= 20
    assert conf["forwarded_allow_ips"] == "127.0.0.1/32,10.0.0.0/8"
    assert conf["child_exit"] is metrics.child_exit
    assert conf["logger_class"] == "distribmail.logs.GunicornLogger"
    # nginx must close idle upstream connections before gunicorn does.
    site = (DEPLOY / "nginx" / "distribmail.conf").read_text()
    (nginx_keepalive,) = re.findall(r"keepalive_timeout (\d+)s;", site)
    assert int(nginx_keepalive) < conf["keepalive"]
    (read_timeout,) = re.findall(r"proxy_read_timeout (\d+)s;", site)
    assert int(read_timeout) > conf["timeout"]


def test_the_example_environment_is_accepted():
    env = example_env()
    ingest = IngestSettings.from_env(env)
    read = ReadSettings.from_env(env)
    assert ingest.trusted_proxies and ingest.allow_cidrs and read.api_tokens
    # nginx's body limit and the app's are the same.
    site = (DEPLOY / "nginx" / "distribmail.conf").read_text()
    (limit,) = re.findall(r"client_max_body_size (\d+)m;", site)
    assert ingest.max_body == int(limit) * 1024 * 1024
