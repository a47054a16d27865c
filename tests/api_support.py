"""Helpers shared by the read API's tests: an app with the API, and rows to read.

The `messages` rows are written here directly, with the values a test wants to see:
the projector that fills the table in production has its own tests.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo

from ingest.web import CLOSERS
from query.api import create_read_app

API_TOKENS = ("api-current", "api-next")

_numbers = itertools.count(1)


def message_key_id(provider: str, message_id: str, recipient: str) -> str:
    """The projection's id for a tracked message (query.projection.message_key_id)."""
    key = "\x1f".join((provider, message_id, recipient))
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def insert_message(db: psycopg.Connection, sent_at: datetime, **values: Any) -> dict[str, Any]:
    """One `messages` row; unspecified columns get plausible values. Returns the row."""
    number = next(_numbers)
    row: dict[str, Any] = {
        "provider": "brevo",
        "message_id": f"{number}.{sent_at.timestamp():.0f}@smtp-relay.mailin.fr",
        "recipient": f"client{number}@example.com",
        "sender": "ventes@atelier.example",
        "subject": f"Votre devis n°{number}",
        "tags": [],
        "sent_at": sent_at,
        "status": "delivered",
        "status_at": sent_at,
        "last_event_at": sent_at,
        "opens": 0,
        "proxy_opens": 0,
        "clicks": 0,
        **values,
    }
    row["id"] = message_key_id(row["provider"], row["message_id"], row["recipient"])
    columns = ", ".join(row)
    placeholders = ", ".join(f"%({name})s" for name in row)
    db.execute(f"INSERT INTO messages ({columns}) VALUES ({placeholders})", row)
    return row


@contextmanager
def read_api(config: Mapping[str, str], **overrides: str) -> Iterator[FlaskClient]:
    """A client of the read API alone, sending the current API token on every request."""
    env = {**config, "DISTRIBMAIL_API_TOKENS": ",".join(API_TOKENS), **overrides}
    app = create_read_app(env)
    app.config["TESTING"] = True
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_TOKENS[0]}"
    try:
        yield client
    finally:
        for close in reversed(app.extensions.get(CLOSERS, [])):
            close()


@contextmanager
def scratch_database(server_url: str, template: str) -> Iterator[str]:
    """A database cloned from the schema template, for tests that share one (read-only
    ones: the log cannot be emptied between tests, by design)."""
    name = f"dm_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')  # type: ignore[arg-type]
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
