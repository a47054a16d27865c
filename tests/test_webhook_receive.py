"""POST /webhooks/brevo: what is stored, deduplicated and answered, for every payload shape."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import psycopg
import pytest

from ingest import recorder
from ingest.events import KEY_MAX_CHARS
from tests.payloads import event, tracking_payloads


def post(client, body, headers, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/webhooks/brevo", data=data, headers=headers, **kwargs)


def rows(db):
    return db.execute(
        "SELECT provider, source, message_id, recipient, event, event_at, problem, payload"
        " FROM events ORDER BY id"
    ).fetchall()


@pytest.mark.parametrize(("record_id", "payload"), tracking_payloads(), ids=lambda v: str(v)[:40])
def test_every_published_payload_is_stored_verbatim(client, db, auth_headers, record_id, payload):
    response = post(client, payload, auth_headers)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"received": 1, "stored": 1, "duplicates": 0}
    ((provider, source, message_id, recipient, name, _, _, stored),) = rows(db)
    assert (provider, source, name) == ("brevo", "webhook", payload["event"])
    assert stored == payload
    assert message_id == payload["message-id"].strip().strip("<>").strip()
    assert recipient == payload["email"].lower()


def test_live_capture_is_normalized(client, db, auth_headers):
    # symfony's hard_bounce.json: `date` 16:37:07 CEST is 14:37:07 UTC, like ts_epoch.
    payload = event("hard_bounce", email="Example@Gmail.com")
    post(client, payload, auth_headers)
    ((_, _, message_id, recipient, _, event_at, problem, _),) = rows(db)
    assert message_id == "202305311437.85220493321@smtp-relay.mailin.fr"
    assert recipient == "example@gmail.com"
    assert event_at == datetime(2023, 5, 31, 14, 37, 7, 372000, tzinfo=UTC)
    assert problem is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"ts_epoch": 1685543827372}, "2023-05-31T14:37:07.372", id="ts_epoch-ms"),
        pytest.param({"ts_epoch": 1604933654}, "2020-11-09T14:54:14", id="ts_epoch-in-seconds"),
        pytest.param({"s_epoch": 1685543827372}, "2023-05-31T14:37:07.372", id="s_epoch-typo"),
        pytest.param(
            {"ts_epoch": "1685543827372"}, "2023-05-31T14:37:07.372", id="ts_epoch-string"
        ),
        pytest.param({"ts_event": 1685543827}, "2023-05-31T14:37:07", id="ts_event"),
        pytest.param({"ts": 1685543827}, "2023-05-31T14:37:07", id="ts"),
        pytest.param({"date": "2023-05-31 16:37:07"}, "2023-05-31T14:37:07", id="date-summer"),
        pytest.param({"date": "2023-01-31 16:37:07"}, "2023-01-31T15:37:07", id="date-winter"),
    ],
)
def test_event_time_fallbacks(client, db, auth_headers, fields, expected):
    payload = {"event": "delivered", "email": "a@b.fr", "message-id": "m@x", **fields}
    post(client, payload, auth_headers)
    ((*_, event_at, problem, _),) = [r[:7] + (r[7],) for r in rows(db)]
    assert event_at == datetime.fromisoformat(expected).replace(tzinfo=UTC)
    assert problem is None


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        pytest.param(event("list_addition"), "unknown event 'list_addition'", id="unknown-event"),
        pytest.param({"event": "delivered", "email": "a@b.fr", "ts_epoch": 1}, "no message-id",
                     id="no-message-id"),
        pytest.param({"event": "delivered", "email": "a@b.fr", "message-id": "m@x",
                      "date": "yyyy-mm-dd hh:i:s"}, "no usable time", id="placeholder-date"),
        pytest.param({}, "no event name", id="empty-object"),
        pytest.param({"items": []}, "no event name", id="inbound-misconfiguration"),
        pytest.param(event(email=42), "unreadable fields (email: Not a valid string.)",
                     id="wrong-type"),
    ],
)  # fmt: skip
def test_valid_json_we_do_not_understand_is_stored_and_flagged(
    client, db, auth_headers, payload, problem
):
    response = post(client, payload, auth_headers)
    assert response.status_code == 200
    assert response.get_json()["stored"] == 1
    ((*_, stored_problem, stored),) = rows(db)
    assert problem in stored_problem
    assert stored == payload


@pytest.mark.parametrize(
    "tag", [["welcome", "tag2"], '["welcome","tag2"]', "single-tag"], ids=["list", "json", "text"]
)
def test_tag_variants_are_kept_as_sent(client, db, auth_headers, tag):
    post(client, event(tag=tag), auth_headers)
    ((*_, stored),) = rows(db)
    assert stored["tag"] == tag


def test_batch_is_stored_in_one_request(client, db, auth_headers):
    batch = [event(ts_epoch=1685543827000 + i, email=f"c{i}@example.com") for i in range(500)]
    response = post(client, batch, auth_headers)
    assert response.get_json() == {"received": 500, "stored": 500, "duplicates": 0}
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 500


def test_batch_wrapped_under_a_key_is_unwrapped(client, db, auth_headers):
    response = post(client, {"events": [event("request"), event("delivered")]}, auth_headers)
    assert response.get_json() == {"received": 2, "stored": 2, "duplicates": 0}


def test_duplicates_inside_one_batch(client, db, auth_headers):
    # The same delivery twice (angle brackets or not, case of the address) plus a click.
    batch = [event(), event(message_id="202305311437.85220493321@smtp-relay.mailin.fr"),
             event(email="CLIENT@example.com"), event("click", link="https://x.fr")]  # fmt: skip
    response = post(client, batch, auth_headers)
    assert response.get_json() == {"received": 4, "stored": 2, "duplicates": 2}
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 2


def test_retransmission_is_a_no_op(client, db, auth_headers):
    first = post(client, [event("request"), event()], auth_headers).get_json()
    again = post(client, [event("request"), event(), event("opened")], auth_headers).get_json()
    assert first == {"received": 2, "stored": 2, "duplicates": 0}
    assert again == {"received": 3, "stored": 1, "duplicates": 2}
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 3


def test_two_clicks_on_different_links_are_two_events(client, db, auth_headers):
    batch = [event("click", link="https://a.fr"), event("click", link="https://b.fr")]
    assert post(client, batch, auth_headers).get_json()["stored"] == 2


def test_empty_list_stores_nothing(client, db, auth_headers):
    assert post(client, [], auth_headers).get_json() == {"received": 0, "stored": 0,
                                                         "duplicates": 0}  # fmt: skip


def test_unstorable_characters_are_spelled_out_not_refused(client, db, auth_headers):
    # jsonb refuses U+0000 and lone surrogates; both are legal in JSON text.
    body = '{"event": "delivered", "email": "a@b.fr", "message-id": "m\\u0000@x",' \
           ' "ts_epoch": 1685543827372, "subject": "A\\u0000B \\ud800"}'  # fmt: skip
    response = post(client, body, auth_headers)
    assert response.status_code == 200
    ((*_, message_id, _, _, _, problem, stored),) = rows(db)
    assert stored["subject"] == "A\\u0000B \\ud800"
    assert "jsonb cannot store" in problem
    assert message_id == "m\ufffd@x"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_url_check_answers_without_storing(client, db, method):
    response = client.open("/webhooks/brevo", method=method)
    assert response.status_code == 200
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_unknown_provider_is_404(client, auth_headers):
    response = client.post("/webhooks/nosuch", data="{}", headers=auth_headers)
    assert response.status_code == 404
    assert "brevo" in response.get_json()["error"]


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["database"]["ok"] is True


def test_very_long_keys_are_cut_in_the_key_columns_and_kept_whole_in_the_payload(
    client, db, auth_headers
):
    # A btree entry must fit in a third of a page: a 3,000-character message-id once made
    # every append of its request fail (and the request wait in the spool forever).
    # Random text: PostgreSQL compresses a repetitive one enough to fit.
    long_id, long_address = secrets.token_hex(1500), secrets.token_hex(1500) + "@example.com"
    bodies = [
        event(message_id=f"<{long_id}a@relay>", email=long_address),
        event(message_id=f"<{long_id}b@relay>", email=long_address),
    ]
    answer = client.post("/webhooks/brevo", json=bodies, headers=auth_headers).get_json()
    assert answer == {"received": 2, "stored": 2, "duplicates": 0}
    rows = db.execute(
        "SELECT message_id, recipient, payload->>'message-id', problem FROM events ORDER BY 3"
    ).fetchall()
    assert [len(r[0]) for r in rows] == [KEY_MAX_CHARS, KEY_MAX_CHARS]
    assert rows[0][0] != rows[1][0]  # same beginning, different keys
    assert [r[2] for r in rows] == [b["message-id"] for b in bodies]  # payload whole
    assert {r[3] for r in rows} == {None}  # nothing wrong with the event itself
    again = client.post("/webhooks/brevo", json=bodies[0], headers=auth_headers).get_json()
    assert again == {"received": 1, "stored": 0, "duplicates": 1}


def test_a_refusal_of_the_rows_is_not_taken_for_an_unreachable_database(db):
    db.execute("CREATE TABLE long_values (v text)")
    db.execute("CREATE INDEX ON long_values (v)")
    with pytest.raises(psycopg.Error) as refused:
        db.execute(
            "INSERT INTO long_values"
            " SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g"
        )
    assert not recorder._unavailable(refused.value)
    with pytest.raises(psycopg.OperationalError) as unreachable:
        psycopg.connect("postgresql://nobody@127.0.0.1:9/none", connect_timeout=1)
    assert recorder._unavailable(unreachable.value)
