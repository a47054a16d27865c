"""`distribmail serve`: gunicorn in front of the app, on the embedded database by default."""

from __future__ import annotations

import argparse
import os
from typing import Any

from gunicorn.app.base import BaseApplication

from distribmail.app import SCHEMA_APPLIED
from ingest.auth import has_configured_credentials, load_or_create_token
from ingest.database import apply_schema
from ingest.settings import IngestSettings
from ingest.wiring import database_url


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported in each worker after the fork: its pool and drainer thread are its own.
        from distribmail.app import create_app

        return create_app()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker")


def run(args: argparse.Namespace) -> int:
    settings = IngestSettings.from_env()
    url = database_url(settings)
    # The workers reuse this server rather than each starting one.
    os.environ["DISTRIBMAIL_DATABASE_URL"] = url
    apply_schema(url)
    os.environ[SCHEMA_APPLIED] = url
    host_for_url = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::") else args.host
    where = "from DISTRIBMAIL_DATABASE_URL" if settings.database_url else "embedded"
    print(f"distribmail: log database {where} (data folder {settings.data_dir.resolve()})")
    print(f"distribmail: webhook URL   http://{host_for_url}:{args.port}/webhooks/brevo")
    if not has_configured_credentials(settings):
        token = load_or_create_token(settings.data_dir)
        print(f"distribmail: webhook token {token}")
        print("  In Brevo: Transactional > Settings > Webhooks > Add a webhook, paste the URL")
        print("  (your public https address) and choose 'Bearer token' with this token.")
    _Gunicorn(
        {
            "bind": f"{args.host}:{args.port}",
            "workers": args.workers,
            # gthread keeps connections alive (sync workers close each one).
            "worker_class": "gthread",
            "threads": args.threads,
            # Shorter than the time Brevo waits, so a stuck request fails on our side first.
            "timeout": 20,
            "graceful_timeout": 20,
            "keepalive": 5,
        }
    ).run()
    return 0
