"""The whole service in one WSGI app: the receiver (ingest) and the read side (query)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from distribmail.logs import install_logging
from distribmail.metrics import install_metrics
from ingest.database import apply_schema
from ingest.settings import IngestSettings
from ingest.web import CLOSERS, register_error_handlers
from ingest.wiring import database_url, mount_receiver
from query.api import mount_api
from query.screen import mount_screen
from query.worker import mount_projector

# Set by `distribmail serve` once it applied the schema, so that its workers skip it.
SCHEMA_APPLIED = "DISTRIBMAIL_SCHEMA_APPLIED_TO"


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """Build the app from DISTRIBMAIL_* settings: `config` (tests) or the environment.

    The schema is applied here too (it is idempotent and serialized by an advisory lock),
    so that an app started by any WSGI server finds its tables.
    """
    env = os.environ if config is None else config
    settings = IngestSettings.from_env(env)
    url = database_url(settings)
    if env.get(SCHEMA_APPLIED) != url:
        apply_schema(url)

    app = Flask("distribmail")
    app.config["DISTRIBMAIL_DATABASE_URL"] = url
    register_error_handlers(app)
    mount_receiver(app, settings, url)
    mount_api(app, env, url)
    mount_screen(app, env, url)  # after the API: it shares the API's pool
    mount_projector(app, env, url)
    # Last: both find the receiver and the tokens in app.extensions.
    install_metrics(app, env)
    install_logging(app, env)
    return app


def shutdown(app: Flask) -> None:
    """Stop the app's background threads and close its pools (tests, embedding)."""
    for close in reversed(app.extensions.get(CLOSERS, [])):
        close()
