"""Builds the write side from settings: database, pool, spool and its drainer, credentials."""

from __future__ import annotations

import atexit
import logging
from collections.abc import Mapping

from flask import Flask

from ingest.auth import WebhookAuth, has_configured_credentials, load_or_create_token
from ingest.database import apply_schema, open_pool
from ingest.embedded import start_embedded
from ingest.notify import FoldNotifier
from ingest.pipeline import Receiver
from ingest.settings import IngestSettings
from ingest.spool import Spool, SpoolDrainer
from ingest.web import install_receiver, register_error_handlers

log = logging.getLogger(__name__)


def database_url(settings: IngestSettings) -> str:
    """The configured server, else the embedded one in the data folder (started if needed)."""
    return settings.database_url or start_embedded(settings.data_dir)


def webhook_auth(settings: IngestSettings) -> WebhookAuth:
    generated = None
    if not has_configured_credentials(settings):
        generated = load_or_create_token(settings.data_dir)
    return WebhookAuth.from_settings(settings, generated)


def build_receiver(settings: IngestSettings, url: str, drain: bool = True) -> Receiver:
    pool = open_pool(
        url, size=settings.pool_size, timeout=settings.db_timeout, name="ingest", autocommit=True
    )
    receiver = Receiver(
        pool,
        Spool(settings.data_dir / "spool"),
        FoldNotifier(url),
        writers=settings.append_writers,
        group_max_events=settings.group_max_events,
    )
    if drain:
        drainer = SpoolDrainer(receiver.drain_spool, settings.spool_drain_every)
        drainer.start()
        receiver.drainer = drainer
    atexit.register(pool.close)
    return receiver


def mount_receiver(app: Flask, settings: IngestSettings, url: str) -> Receiver:
    receiver = build_receiver(settings, url)
    install_receiver(app, receiver, webhook_auth(settings), settings.max_body)
    return receiver


def create_receiver_app(config: Mapping[str, str] | None = None) -> Flask:
    """The receiver alone, for a deployment where only it faces the internet."""
    settings = IngestSettings.from_env(config)
    url = database_url(settings)
    apply_schema(url)
    app = Flask("distribmail.ingest")
    register_error_handlers(app)
    mount_receiver(app, settings, url)
    return app
