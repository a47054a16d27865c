"""When the database does not answer: spool durably, answer 200, drain later, lose nothing."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

from ingest.spool import MAX_ATTEMPTS, Spool, SpooledRequest
from ingest.web import RECEIVER
from tests.payloads import event
from tests.servers import wait_until


def test_database_stopped_mid_run_spools_then_drains_exactly_once(
    stoppable, make_app, auth_headers, tmp_path
):
    data = tmp_path / "data"
    client = make_app(
        DISTRIBMAIL_DATABASE_URL=stoppable.url, DISTRIBMAIL_DATA_DIR=str(data)
    ).test_client()
    before = [event(ts_epoch=1685543827000 + i) for i in range(3)]
    assert client.post("/webhooks/brevo", json=before, headers=auth_headers).status_code == 200

    stoppable.stop()
    during = [event("opened", ts_epoch=1685543900000 + i) for i in range(5)]
    replayed = before[:2]  # Brevo retrying something we already stored
    answers = [
        client.post("/webhooks/brevo", json=during, headers=auth_headers),
        client.post("/webhooks/brevo", json=replayed, headers=auth_headers),
        client.post("/webhooks/brevo", json=during[0], headers=auth_headers),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.get_json()["spooled"] for a in answers] == [5, 2, 1]
    assert len(list((data / "spool").glob("*.json"))) == 3
    assert client.get("/readyz").status_code == 503

    stoppable.start()
    assert wait_until(lambda: not list((data / "spool").glob("*.json")))
    assert stoppable.count() == 3 + 5
    assert stoppable.count("SELECT count(DISTINCT dedup_key) FROM events") == 8
    assert client.get("/readyz").status_code == 200


def test_spooled_events_keep_their_receive_time(tmp_path, database_url, make_app, db):
    spool = Spool(tmp_path / "data" / "spool")
    received = datetime(2026, 3, 8, 1, 5, tzinfo=UTC)
    spool.write(SpooledRequest("brevo", "webhook", received, [event()]))
    make_app(DISTRIBMAIL_DATA_DIR=str(tmp_path / "data"))
    # The file goes only after the commit: wait for both.
    assert wait_until(lambda: spool.pending() == [])
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    assert db.execute("SELECT received_at FROM events").fetchone()[0] == received


def test_once_the_drain_succeeds_webhooks_go_to_the_database_again_at_once(
    stoppable, make_app, auth_headers, tmp_path
):
    # After a failure the receiver sends webhooks straight to the spool for a second
    # (DOWN_BACKOFF_SECONDS). A drained spool file proves the database is back: the
    # next webhook must be stored, not spooled, however soon it comes.
    data = tmp_path / "data"
    app = make_app(DISTRIBMAIL_DATABASE_URL=stoppable.url, DISTRIBMAIL_DATA_DIR=str(data))
    client = app.test_client()
    stoppable.stop()
    down = client.post("/webhooks/brevo", json=event(ts_epoch=1685543900000), headers=auth_headers)
    assert down.get_json()["spooled"] == 1
    # As if it had only just failed, whenever the drainer thread gets to the file.
    app.extensions[RECEIVER]._down_until = time.monotonic() + 3600
    stoppable.start()
    assert wait_until(lambda: not list((data / "spool").glob("*.json")))
    after = client.post("/webhooks/brevo", json=event(ts_epoch=1685543901000), headers=auth_headers)
    assert after.get_json() == {"received": 1, "stored": 1, "duplicates": 0}


def test_spool_unwritable_and_database_down_is_429(stoppable, make_app, auth_headers, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "spool").write_text("not a folder")  # any OSError: full disk, read-only, ...
    client = make_app(
        DISTRIBMAIL_DATABASE_URL=stoppable.url, DISTRIBMAIL_DATA_DIR=str(data)
    ).test_client()
    stoppable.stop()
    response = client.post("/webhooks/brevo", json=event(), headers=auth_headers)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0


def test_spool_file_is_durable_and_complete(tmp_path):
    spool = Spool(tmp_path / "spool")
    payloads = [event(subject="Devis \u00e9t\u00e9"), {"weird": "\ud800"}]
    path = spool.write(SpooledRequest("brevo", "webhook", datetime.now(UTC), payloads))
    assert path.parent == tmp_path / "spool"
    assert not list((tmp_path / "spool").glob(".*.partial"))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert Spool.read(path).payloads == payloads


def test_a_file_that_keeps_failing_is_set_aside_not_deleted(tmp_path):
    spool = Spool(tmp_path / "spool")
    path = spool.write(SpooledRequest("nosuch", "webhook", datetime.now(UTC), [event()]))

    def append(request):
        raise KeyError(request.provider)

    for _ in range(MAX_ATTEMPTS):
        assert spool.drain(append, lambda e: False) == 0
    assert spool.pending() == []
    kept = tmp_path / "spool" / "failed" / path.name
    assert json.loads(kept.read_text())["provider"] == "nosuch"


def test_a_file_locked_by_another_drainer_is_skipped(tmp_path):
    import fcntl

    spool = Spool(tmp_path / "spool")
    path = spool.write(SpooledRequest("brevo", "webhook", datetime.now(UTC), [event()]))
    seen = []
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert spool.drain(seen.append, lambda e: False) == 0
    finally:
        os.close(fd)
    assert seen == []
    assert spool.drain(seen.append, lambda e: False) == 1
    assert len(seen) == 1
    assert spool.pending() == []


def test_a_row_the_database_refuses_is_spooled_not_answered_500(
    make_app, db, auth_headers, tmp_path, refuse_recipient
):
    # An admin's constraint, say, that refuses one recipient: a real refusal by PostgreSQL.
    refuse_recipient("refused@example.com")
    data = tmp_path / "refusing"
    client = make_app(
        DISTRIBMAIL_DATA_DIR=str(data), DISTRIBMAIL_SPOOL_DRAIN_EVERY="3600"
    ).test_client()
    response = client.post(
        "/webhooks/brevo", json=[event(), event(email="refused@example.com")], headers=auth_headers
    )
    assert response.status_code == 200
    assert response.get_json()["spooled"] == 2
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0  # all or nothing

    db.execute("DROP TRIGGER refuse_x ON events")
    spool = Spool(data / "spool")
    receiver = client.application.extensions["distribmail.receiver"]
    assert receiver.drain_spool() == 1
    assert spool.pending() == []
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 2
