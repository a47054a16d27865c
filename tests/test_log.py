"""The log's guarantees, enforced by the database itself."""

from __future__ import annotations

import psycopg
import pytest

from ingest.database import apply_schema
from tests.payloads import event


@pytest.fixture
def one_event(client, auth_headers, db):
    client.post("/webhooks/brevo", json=event(), headers=auth_headers)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET recipient = 'someone@else.fr'",
        "UPDATE events SET payload = '{}'::jsonb",
        "DELETE FROM events",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ],
    ids=["update-recipient", "update-payload", "delete", "truncate", "truncate-cascade"],
)
def test_the_log_refuses_changes(one_event, db, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        db.execute(statement)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_the_dedup_key_is_unique_in_the_database(one_event, db):
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "INSERT INTO events (provider, source, dedup_key, payload)"
            " SELECT provider, source, dedup_key, payload FROM events"
        )


def test_schema_applies_twice_without_change(database_url, one_event, db):
    apply_schema(database_url)
    apply_schema(database_url)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    triggers = db.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal"
        " ORDER BY tgname"
    ).fetchall()
    assert [t[0] for t in triggers] == [
        "events_no_truncate",
        "events_no_update_delete",
        "events_queue_for_fold",
    ]


def test_an_append_queues_its_messages_for_the_fold(client, auth_headers, db):
    batch = [event("request"), event("delivered"), event("delivered", email="other@example.com")]
    client.post("/webhooks/brevo", json=batch, headers=auth_headers)
    queued = db.execute("SELECT recipient FROM fold_queue ORDER BY recipient").fetchall()
    assert [q[0] for q in queued] == ["client@example.com", "other@example.com"]
