"""`distribmail serve`: gunicorn in front of the app, on the embedded database by default."""

from __future__ import annotations

import argparse
import gc
import os
import runpy
from typing import Any

from gunicorn.app.base import BaseApplication

from distribmail import cpu_pinning, logs, metrics
from distribmail.app import SCHEMA_APPLIED
from ingest.auth import has_configured_credentials, load_or_create_token
from ingest.database import apply_schema
from ingest.settings import IngestSettings, env_switch
from ingest.wiring import database_url


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    """Settings in three layers: serve's defaults, then the --config file (production's
    deploy/gunicorn.conf.py), then the options given on the command line. gunicorn runs
    load_config again on SIGHUP, so an edited file takes effect on a graceful reload."""

    def __init__(
        self, defaults: dict[str, Any], config_file: str | None, given: dict[str, Any]
    ) -> None:
        self.defaults = defaults
        self.config_file = config_file
        self.given = given
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.defaults.items():
            self.cfg.set(key, value)
        if self.config_file:
            # What `gunicorn -c FILE` does: run the file, keep the names gunicorn knows.
            for key, value in runpy.run_path(self.config_file).items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)
        for key, value in self.given.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported in each worker after the fork: its pool and drainer thread are its own.
        from distribmail.app import create_app

        app = create_app()
        logs.write_in_background()
        # What is alive now (the modules, the app) stays alive: out of the collector's
        # sight, a full collection walks only what requests made since, instead of pausing
        # a request for tens of milliseconds now and then (measured: p99 of 500-event
        # batches at 2 a second 64-96 ms before, 36 ms without collections).
        gc.collect()
        gc.freeze()
        return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--workers", type=int, help="gunicorn worker processes (default 2)")
    parser.add_argument("--threads", type=int, help="threads per worker (default 8)")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="gunicorn settings file, e.g. deploy/gunicorn.conf.py; options given here win",
    )


def run(args: argparse.Namespace) -> int:
    settings = IngestSettings.from_env()
    url = database_url(settings)
    # The workers reuse this server rather than each starting one.
    os.environ["DISTRIBMAIL_DATABASE_URL"] = url
    apply_schema(url)
    os.environ[SCHEMA_APPLIED] = url
    # Before gunicorn forks: every worker writes its metrics under this folder.
    metrics.prepare_multiprocess(settings.data_dir)
    host_for_url = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::") else args.host
    where = "from DISTRIBMAIL_DATABASE_URL" if settings.database_url else "embedded"
    print(f"distribmail: log database {where} (data folder {settings.data_dir.resolve()})")
    print(f"distribmail: webhook URL   http://{host_for_url}:{args.port}/webhooks/brevo")
    if not has_configured_credentials(settings):
        token = load_or_create_token(settings.data_dir)
        print(f"distribmail: webhook token {token}")
        print("  In Brevo: Transactional > Settings > Webhooks > Add a webhook, paste the URL")
        print("  (your public https address) and choose 'Bearer token' with this token.")
    defaults = {
        "workers": 2,
        # gthread keeps connections alive (sync workers close each one).
        "worker_class": "gthread",
        "threads": 8,
        # Shorter than the time Brevo waits, so a stuck request fails on our side first.
        "timeout": 20,
        "graceful_timeout": 20,
        "keepalive": 5,
        # gunicorn's own lines in the app's JSON shape; a dead worker's gauges dropped.
        "logger_class": "distribmail.logs.GunicornLogger",
        "child_exit": metrics.child_exit,
    }
    if env_switch(os.environ, "PIN_WORKERS", True):
        defaults.update(pre_fork=cpu_pinning.choose_cpu, post_fork=cpu_pinning.pin_to_cpu)
    given = {"bind": f"{args.host}:{args.port}", "workers": args.workers, "threads": args.threads}
    _Gunicorn(defaults, args.config, {k: v for k, v in given.items() if v is not None}).run()
    return 0
