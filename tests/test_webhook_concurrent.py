"""Concurrent webhooks on a real PostgreSQL: requests that share a transaction (group
commit) still each get their own answer, all or nothing, and nothing is stored twice."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ingest import recorder
from ingest.errors import ConfigError
from ingest.providers import PROVIDERS
from ingest.settings import IngestSettings
from tests.payloads import event

WAIT = 20


def normalized(payloads: list[dict[str, Any]]):
    return [PROVIDERS["brevo"].normalize(p, "webhook") for p in payloads]


def test_a_group_tells_each_request_its_own_new_events(app, db):
    pool = app.extensions["distribmail.receiver"].pool
    shared = event(message_id="<shared@x>")
    already = event(message_id="<already@x>")
    assert recorder.insert_events(pool, normalized([already])) == 1

    stored = recorder.insert_groups(
        pool,
        [
            normalized([shared, event(message_id="<a1@x>"), event(message_id="<a2@x>")]),
            normalized([shared, already]),  # both already taken: by the first, by the log
            normalized([event(message_id="<c1@x>"), event(message_id="<c1@x>")]),
            [],
        ],
    )
    assert stored == [3, 0, 1, 0]
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1 + 3 + 1


def post_concurrently(app, bodies: list[Any], headers: dict[str, str]) -> list[Any]:
    """Each body from its own thread and test client, all released at once."""
    answers: list[Any] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def post(index: int) -> None:
        client = app.test_client()
        start.wait(WAIT)
        answers[index] = client.post("/webhooks/brevo", json=bodies[index], headers=headers)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    return answers


@pytest.fixture
def group_sizes(monkeypatch):
    """How many requests each append carried (the real recorder still does the writing)."""
    sizes: list[int] = []
    write = recorder.insert_groups

    def counting(pool, groups):
        sizes.append(len(groups))
        return write(pool, groups)

    monkeypatch.setattr(recorder, "insert_groups", counting)
    return sizes


def test_concurrent_requests_each_get_their_own_counts(make_app, db, auth_headers, group_sizes):
    app = make_app(DISTRIBMAIL_APPEND_WRITERS="1")
    shared = event(message_id="<retried@x>")
    bodies = [
        [shared, event(message_id=f"<m{i}@x>", ts_epoch=1685543827000 + i)] for i in range(12)
    ]
    answers = post_concurrently(app, bodies, auth_headers)

    assert [a.status_code for a in answers] == [200] * 12
    receipts = [a.get_json() for a in answers]
    assert all(r["received"] == 2 for r in receipts)
    assert sum(r["stored"] for r in receipts) == 13  # the shared event counted once
    assert sum(r["duplicates"] for r in receipts) == 11
    assert all(r["stored"] >= 1 for r in receipts)  # each one's own event is its own
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 13
    assert sum(group_sizes) == 12


def test_a_refused_request_in_a_group_is_spooled_and_the_others_are_stored(
    make_app, db, auth_headers, group_sizes, tmp_path, refuse_recipient
):
    refuse_recipient("refused@example.com")
    app = make_app(
        DISTRIBMAIL_APPEND_WRITERS="1",
        DISTRIBMAIL_DATA_DIR=str(tmp_path / "refusing"),
        DISTRIBMAIL_SPOOL_DRAIN_EVERY="3600",
    )
    # Hold the first append on a lock (its trigger queues the fold), so that the next
    # requests queue behind it and are written together.
    with db.transaction():
        db.execute("LOCK TABLE fold_queue IN EXCLUSIVE MODE")
        first = threading.Thread(
            target=lambda: app.test_client().post(
                "/webhooks/brevo", json=event(message_id="<first@x>"), headers=auth_headers
            )
        )
        first.start()
        bodies = [event(message_id=f"<g{i}@x>") for i in range(5)]
        bodies[2] = event(message_id="<g2@x>", email="refused@example.com")
        answers: list[Any] = []
        threads = [
            threading.Thread(
                target=lambda b=body: answers.append(
                    app.test_client().post("/webhooks/brevo", json=b, headers=auth_headers)
                )
            )
            for body in bodies
        ]
        for thread in threads:
            thread.start()
        committer = app.extensions["distribmail.receiver"]._committer
        while len(committer._queue) < 5:
            threading.Event().wait(0.005)
    for thread in [first, *threads]:
        thread.join(WAIT)
        assert not thread.is_alive()

    assert [a.status_code for a in answers] == [200] * 5
    receipts = sorted((a.get_json() for a in answers), key=lambda r: r.get("spooled", 0))
    assert receipts == [{"received": 1, "stored": 1, "duplicates": 0}] * 4 + [
        {"received": 1, "stored": 0, "duplicates": 0, "spooled": 1}
    ]
    stored = {r[0] for r in db.execute("SELECT message_id FROM events")}
    assert stored == {"first@x", "g0@x", "g1@x", "g3@x", "g4@x"}
    # The five were first tried together, then one by one.
    assert group_sizes[:2] == [1, 5]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DISTRIBMAIL_APPEND_WRITERS", "0", "DISTRIBMAIL_APPEND_WRITERS must be at least 1, not 0"),
        ("DISTRIBMAIL_GROUP_MAX_EVENTS", "-5", "must be at least 1, not -5"),
        ("DISTRIBMAIL_APPEND_WRITERS", "two", "must be a whole number, not 'two'"),
    ],
)
def test_group_commit_settings_refuse_nonsense(name, value, message):
    with pytest.raises(ConfigError, match=message):
        IngestSettings.from_env({name: value})


def test_group_commit_settings_reach_the_receiver(make_app):
    app = make_app(DISTRIBMAIL_APPEND_WRITERS="3", DISTRIBMAIL_GROUP_MAX_EVENTS="40")
    committer = app.extensions["distribmail.receiver"]._committer
    assert (committer._free_writers, committer._max_size) == (3, 40)
