"""A large batch goes to the log a chunk at a time (ingest.recorder.insert_stream), in one
transaction: the same rows, counts and all-or-nothing as one statement would give."""

from __future__ import annotations

import pytest

from ingest import recorder
from tests.payloads import event
from tests.servers import wait_until

CHUNK = 3  # so that a ten-event batch is four chunks


@pytest.fixture
def streamed(monkeypatch):
    """Chunks of CHUNK events; returns the list of chunk sizes each streamed batch sent."""
    monkeypatch.setattr(recorder, "STREAM_CHUNK", CHUNK)
    calls: list[list[int]] = []
    real = recorder.insert_stream

    def spy(pool, chunks):
        sizes: list[int] = []
        calls.append(sizes)

        def counted():
            for chunk in chunks:
                sizes.append(len(chunk))
                yield chunk

        return real(pool, counted())

    monkeypatch.setattr(recorder, "insert_stream", spy)
    return calls


def numbered(n: int, **extra) -> dict:
    return event(message_id=f"<batch-{n}@x>", **extra)


def test_a_large_batch_is_stored_in_chunks_with_the_same_counts(
    streamed, make_app, auth_headers, db
):
    # No projector: it would empty fold_queue, which is checked below.
    client = make_app(DISTRIBMAIL_PROJECTOR="off").test_client()
    already = numbered(0)
    client.post("/webhooks/brevo", json=already, headers=auth_headers)
    batch = [numbered(n) for n in range(1, 11)]
    batch[4] = numbered(1)  # repeats an earlier chunk's event
    batch[7] = batch[6]  # repeats an event of its own chunk
    batch[9] = already  # already in the log
    answer = client.post("/webhooks/brevo", json=batch, headers=auth_headers).get_json()
    assert answer == {"received": 10, "stored": 7, "duplicates": 3}
    assert streamed == [[3, 3, 3, 1]]
    ids = db.execute("SELECT message_id FROM events ORDER BY id").fetchall()
    assert [r[0] for r in ids] == ["batch-0@x"] + [f"batch-{n}@x" for n in (1, 2, 3, 4, 6, 7, 9)]
    assert len({r[0] for r in ids}) == len(ids)
    queued = db.execute("SELECT DISTINCT message_id FROM fold_queue").fetchall()
    assert {r[0] for r in queued} == {r[0] for r in ids}
    again = client.post("/webhooks/brevo", json=batch, headers=auth_headers).get_json()
    assert again == {"received": 10, "stored": 0, "duplicates": 10}


def test_a_small_batch_still_goes_through_the_group_commit(streamed, client, auth_headers):
    answer = client.post(
        "/webhooks/brevo", json=[numbered(n) for n in range(CHUNK)], headers=auth_headers
    ).get_json()
    assert answer == {"received": CHUNK, "stored": CHUNK, "duplicates": 0}
    assert streamed == []


def test_a_row_refused_in_a_later_chunk_leaves_nothing_of_the_batch(
    streamed, make_app, db, auth_headers, tmp_path, refuse_recipient
):
    refuse_recipient("refused@example.com")
    client = make_app(
        DISTRIBMAIL_DATA_DIR=str(tmp_path / "refusing"), DISTRIBMAIL_SPOOL_DRAIN_EVERY="3600"
    ).test_client()
    batch = [numbered(n) for n in range(10)]
    batch[8] = numbered(8, email="refused@example.com")
    answer = client.post("/webhooks/brevo", json=batch, headers=auth_headers).get_json()
    assert answer["spooled"] == 10
    assert streamed and streamed[0][:3] == [3, 3, 3]  # the first chunks were sent
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_a_later_chunk_in_a_month_without_partition_falls_back_to_one_statement(
    streamed, client, auth_headers, db
):
    now = event()["ts_epoch"]
    february_2024 = 1_707_000_000_000  # 2024-02-03
    batch = [numbered(n, ts_epoch=now) for n in range(3)]
    batch += [numbered(n, ts_epoch=february_2024 + n) for n in range(3, 8)]
    answer = client.post("/webhooks/brevo", json=batch, headers=auth_headers).get_json()
    assert answer == {"received": 8, "stored": 8, "duplicates": 0}
    assert streamed[0][:2] == [3, 3]  # the stream stopped at the second chunk, and then:
    where = db.execute(
        "SELECT tableoid::regclass::text, count(*) FROM events GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert ("events_2024_02", 5) in [tuple(r) for r in where]


def test_a_large_batch_with_the_database_down_is_spooled_then_drained(
    streamed, stoppable, make_app, auth_headers, tmp_path
):
    data = tmp_path / "data"
    client = make_app(
        DISTRIBMAIL_DATABASE_URL=stoppable.url, DISTRIBMAIL_DATA_DIR=str(data)
    ).test_client()
    stoppable.stop()
    batch = [numbered(n) for n in range(10)]
    answer = client.post("/webhooks/brevo", json=batch, headers=auth_headers).get_json()
    assert answer["spooled"] == 10
    stoppable.start()
    assert wait_until(lambda: not list((data / "spool").glob("*.json")))
    assert stoppable.count() == 10
