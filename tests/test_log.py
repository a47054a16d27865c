"""The log's guarantees, enforced by the database itself."""

from __future__ import annotations

import psycopg
import pytest

from ingest import recorder
from ingest.database import apply_schema, open_pool
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
            "INSERT INTO events (provider, source, dedup_key, event_at, payload)"
            " SELECT provider, source, dedup_key, event_at, payload FROM events"
        )


def test_undated_events_are_unique_too(client, auth_headers, db):
    junk = {"items": []}
    for _ in range(2):
        client.post("/webhooks/brevo", json=junk, headers=auth_headers)
    rows = db.execute("SELECT tableoid::regclass::text, event_at FROM events").fetchall()
    assert rows == [("events_undated", None)]


def test_each_month_gets_its_partition(client, auth_headers, db):
    months = [1685543827372, 1701172800000, 1606780800000]  # 2023-05, 2023-11, 2020-12
    client.post("/webhooks/brevo", json=[event(ts_epoch=ms) for ms in months], headers=auth_headers)
    placed = db.execute("SELECT tableoid::regclass::text FROM events ORDER BY event_at").fetchall()
    assert [p[0] for p in placed] == ["events_2020_12", "events_2023_05", "events_2023_11"]


def test_a_time_too_far_off_goes_to_the_default_partition(client, auth_headers, db):
    client.post("/webhooks/brevo", json=event(ts_epoch=1), headers=auth_headers)  # 1970
    assert db.execute("SELECT tableoid::regclass::text FROM events").fetchone()[0] == (
        "events_undated"
    )


def test_a_retransmission_a_month_later_is_still_a_no_op(client, auth_headers, db):
    # Keyed by the event's own time, so it meets its first copy in the same partition.
    first = client.post("/webhooks/brevo", json=event(), headers=auth_headers).get_json()
    again = client.post("/webhooks/brevo", json=event(), headers=auth_headers).get_json()
    assert (first["stored"], again["duplicates"]) == (1, 1)


@pytest.mark.parametrize("payload", [{}, event()], ids=["undated", "dated"])
def test_a_partition_cannot_be_truncated_or_emptied_directly(client, auth_headers, db, payload):
    client.post("/webhooks/brevo", json=payload, headers=auth_headers)
    partition = db.execute("SELECT tableoid::regclass::text FROM events").fetchone()[0]
    for statement in (f"TRUNCATE {partition}", f"DELETE FROM {partition}"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            db.execute(statement)


def test_schema_applies_twice_without_change(database_url, one_event, db):
    apply_schema(database_url)
    apply_schema(database_url)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    triggers = db.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal"
        " AND tgparentid = 0 ORDER BY tgname"
    ).fetchall()
    assert [t[0] for t in triggers] == [
        "events_no_truncate",
        "events_no_update_delete",
        "events_queue_for_fold",
    ]


def test_an_append_queues_its_messages_for_the_fold(make_app, auth_headers, db):
    client = make_app(DISTRIBMAIL_PROJECTOR="off").test_client()  # it would empty the queue
    batch = [event("request"), event("delivered"), event("delivered", email="other@example.com")]
    client.post("/webhooks/brevo", json=batch, headers=auth_headers)
    queued = db.execute("SELECT recipient FROM fold_queue ORDER BY recipient").fetchall()
    assert [q[0] for q in queued] == ["client@example.com", "other@example.com"]


TRICKY = [
    event(message_id="<nul@x>", subject="a\u0000b"),  # jsonb refuses U+0000: spelled out
    event(message_id="<surrogate@x>", subject="a\ud800b"),  # and lone surrogates
    event(message_id="<backslash@x>", subject="literal \\u0000 text"),  # fine as it is
    event(message_id="<accents@x>", subject="Devis n°118 — été ✓", email="Élodie@Example.com"),
    event("click", message_id="<link@x>", link='https://example.com/?a=1&b="2"'),
    {"event": "delivered", "message-id": "<no-time@x>", "email": "a@b.c"},  # flagged
    {"unknown": ["shape", {"nested": None}], "n": 1.5},  # flagged, keyed by its payload
]


@pytest.mark.parametrize("arrays_from", [1, 10_000], ids=["arrays", "json"])
def test_both_forms_of_the_insert_store_the_same_rows(db, database_url, monkeypatch, arrays_from):
    # A few events go as one JSON text, many as binary arrays (ingest.recorder): whichever
    # form, the same events must give the same rows.
    from ingest.providers import PROVIDERS

    monkeypatch.setattr(recorder, "ARRAYS_FROM", arrays_from)
    events = [PROVIDERS["brevo"].normalize(p, "webhook") for p in TRICKY]
    with open_pool(database_url, size=1, autocommit=True) as pool:
        assert recorder.insert_events(pool, events) == len(TRICKY)
    rows = db.execute(
        "SELECT message_id, recipient, event, event_at, problem, payload, dedup_key"
        " FROM events ORDER BY dedup_key"
    ).fetchall()
    expected = {e.dedup_key: (e.message_id, e.recipient, e.event, e.event_at) for e in events}
    assert {bytes(r[6]): (r[0], r[1], r[2], r[3]) for r in rows} == expected
    by_id = {r[0]: r for r in rows}
    assert by_id["nul@x"][5]["subject"] == "a\\u0000b"
    assert "kept as \\uXXXX text" in by_id["nul@x"][4]
    assert by_id["surrogate@x"][5]["subject"] == "a\\ud800b"
    assert by_id["backslash@x"][5]["subject"] == "literal \\u0000 text"
    assert by_id["backslash@x"][4] is None
    assert by_id["accents@x"][5]["subject"] == "Devis n°118 — été ✓"
    assert by_id["link@x"][5]["link"] == 'https://example.com/?a=1&b="2"'
    assert by_id["no-time@x"][4] == "no usable time"
    assert {r[5]["n"] for r in rows if r[0] is None} == {1.5}


@pytest.mark.parametrize("arrays_from", [1, 10_000], ids=["arrays", "json"])
def test_both_forms_of_a_grouped_insert_tell_each_request_its_new_rows(
    db, database_url, monkeypatch, arrays_from
):
    from ingest.providers import PROVIDERS

    monkeypatch.setattr(recorder, "ARRAYS_FROM", arrays_from)
    normalize = PROVIDERS["brevo"].normalize
    old, a, b, c = (
        normalize(event(message_id=f"<{name}@x>"), "webhook") for name in ("old", "a", "b", "c")
    )
    with open_pool(database_url, size=1, autocommit=True) as pool:
        assert recorder.insert_events(pool, [old]) == 1
        # The second request repeats the first's `b` and the log's `old`: new for nobody.
        assert recorder.insert_groups(pool, [[a, b], [b, old, c]]) == [2, 1]
    rows = db.execute("SELECT message_id FROM events ORDER BY message_id").fetchall()
    assert [r[0] for r in rows] == ["a@x", "b@x", "c@x", "old@x"]


@pytest.mark.parametrize("arrays_from", [1, 10_000], ids=["arrays", "json"])
def test_both_forms_keep_a_given_receive_time(db, database_url, monkeypatch, arrays_from):
    from datetime import UTC, datetime

    from ingest.providers import PROVIDERS

    monkeypatch.setattr(recorder, "ARRAYS_FROM", arrays_from)
    spooled_at = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
    one = PROVIDERS["brevo"].normalize(event(), "webhook")
    with open_pool(database_url, size=1, autocommit=True) as pool:
        assert recorder.insert_events(pool, [one], spooled_at) == 1
    assert db.execute("SELECT received_at FROM events").fetchone()[0] == spooled_at


def test_a_log_keyed_in_the_locales_order_takes_byte_order_once(database_url, one_event, db):
    # A log made before the key columns compared byte by byte: schema.sql converts them
    # (and rebuilds their index) without touching a row; a second apply changes nothing.
    db.execute(
        'ALTER TABLE events ALTER COLUMN provider TYPE text COLLATE "default",'
        ' ALTER COLUMN message_id TYPE text COLLATE "default",'
        ' ALTER COLUMN recipient TYPE text COLLATE "default"'
    )
    key_collations = (
        "SELECT a.attname, c.collname FROM pg_attribute a"
        " JOIN pg_collation c ON c.oid = a.attcollation"
        " WHERE a.attrelid = 'events'::regclass"
        " AND a.attname IN ('provider', 'message_id', 'recipient') ORDER BY 1"
    )
    assert {r[1] for r in db.execute(key_collations)} == {"default"}
    before = db.execute("SELECT id, dedup_key, message_id, recipient FROM events").fetchall()
    apply_schema(database_url)
    apply_schema(database_url)
    assert {r[1] for r in db.execute(key_collations)} == {"C"}
    after = db.execute("SELECT id, dedup_key, message_id, recipient FROM events").fetchall()
    assert after == before
    index = db.execute("SELECT pg_get_indexdef('events_message_idx'::regclass)").fetchone()[0]
    assert "(provider, message_id, recipient)" in index


def test_a_log_whose_dedup_index_led_with_the_key_is_rebuilt_time_first_once(
    database_url, one_event, db
):
    db.execute("ALTER TABLE events DROP CONSTRAINT events_dedup_key_unique")
    db.execute(
        "ALTER TABLE events ADD CONSTRAINT events_dedup_key_unique"
        " UNIQUE NULLS NOT DISTINCT (dedup_key, event_at)"
    )
    db.execute("CREATE INDEX events_event_at_idx ON events (event_at)")
    definition = (
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'events'::regclass AND conname = 'events_dedup_key_unique'"
    )
    apply_schema(database_url)
    apply_schema(database_url)
    assert "(event_at, dedup_key)" in db.execute(definition).fetchone()[0]
    assert db.execute("SELECT to_regclass('events_event_at_idx')").fetchone()[0] is None
    # The log still refuses a second copy of what it holds.
    from ingest.providers import PROVIDERS

    again = PROVIDERS["brevo"].normalize(event(), "webhook")
    with open_pool(database_url, size=1, autocommit=True) as pool:
        assert recorder.insert_events(pool, [again]) == 0
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1
