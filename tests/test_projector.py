"""The projector on real PostgreSQL: late commits, concurrent workers, batches, the thread.

Events go in through the production path (ingest.pipeline.Receiver.append, or the app's
webhook route); the projection is checked against what the fold says for the whole log.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest.database import open_pool
from ingest.errors import ConfigError
from ingest.pipeline import Receiver
from ingest.spool import Spool
from query.projection import COLUMNS, lock_key, message_key_id, message_row, select_events
from query.projector import Projector, drain, project_batch, read_lag
from query.worker import ProjectorSettings
from tests.payloads import event

BASE_MS = 1_767_000_000_000  # 2025-12-29, in Brevo's ts_epoch milliseconds
KNOWN = ["request", "delivered", "deferred", "soft_bounce", "hard_bounce", "invalid_email",
         "blocked", "error", "spam", "unsubscribed", "unique_opened", "opened",
         "unique_proxy_open", "proxy_open", "click"]  # fmt: skip


def mid(n: int) -> str:
    return f"<2026{n:08d}.tests@smtp-relay.mailin.fr>"


# --- helpers shared with test_replay ------------------------------------------------------


@pytest.fixture
def receiver(database_url: str, tmp_path: Path) -> Iterator[Receiver]:
    pool = open_pool(database_url, size=8, name="test-append")
    yield Receiver(pool, Spool(tmp_path / "spool"))
    pool.close()


@pytest.fixture
def folder(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection for driving the projector by hand."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def random_requests(seed: int, messages: int = 30, events: int = 240) -> list[list[dict]]:
    """Webhook bodies for a random workload: many messages, every kind of event, unknown
    events, retransmissions, bodies mixing messages, in shuffled order."""
    rng = random.Random(seed)
    payloads = []
    for _ in range(events):
        n = rng.randrange(messages)
        name = rng.choice([*KNOWN, "some_future_event"])
        extra: dict[str, Any] = {}
        if name == "click":
            extra["link"] = rng.choice(["https://a.example/q", "https://b.example/"])
        if rng.random() < 0.3:
            extra["tag"] = '["devis","relance"]'
        payloads.append(
            event(
                name,
                f"client{rng.randrange(3)}@example.com",
                mid(n),
                BASE_MS + rng.randrange(0, 3_600_000, 250),
                **extra,
            )  # fmt: skip
        )
    payloads += rng.sample(payloads, len(payloads) // 10)  # Brevo retries
    rng.shuffle(payloads)
    bodies, i = [], 0
    while i < len(payloads):
        size = rng.choice([1, 1, 2, 5, 12])
        bodies.append(payloads[i : i + size])
        i += size
    return bodies


def append_all(receiver: Receiver, bodies: list[list[dict]]) -> None:
    for body in bodies:
        receiver.append("brevo", "webhook", body)


def projection(conn: psycopg.Connection[Any], table: str = "messages") -> dict[str, tuple]:
    """Every row but folded_at, by id."""
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {table}").fetchall()
    return {row[0]: tuple(row) for row in rows}


def folded_from_the_log(conn: psycopg.Connection[Any]) -> dict[str, tuple]:
    """What the projection must be: the fold of every message's whole history."""
    keys = conn.execute(
        "SELECT DISTINCT provider, message_id, recipient FROM events"
        " WHERE message_id IS NOT NULL AND recipient IS NOT NULL"
    ).fetchall()
    events = select_events(conn, [tuple(k) for k in keys])
    rows = [message_row(key, evs) for key, evs in events.items()]
    return {r["id"]: tuple(r[c] for c in COLUMNS) for r in rows}


def statuses(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    return dict(conn.execute("SELECT message_id, status FROM messages").fetchall())


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class HeldTransaction:
    """Stands in for the pool so that recorder.insert_events runs its real statement in a
    transaction the test commits when it chooses."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        yield self.conn


# --- tests --------------------------------------------------------------------------------


def test_message_key_id_is_the_documented_hash():
    expected = hashlib.sha256(b"brevo\x1fabc@relay\x1fa@example.com").hexdigest()[:24]
    assert message_key_id("brevo", "abc@relay", "a@example.com") == expected
    assert message_key_id("brevo", "ab", "ca@x") != message_key_id("brevo", "abc", "a@x")


def test_event_committed_late_is_folded(database_url, db, folder, tmp_path):
    spool = Spool(tmp_path / "spool")
    # The month's partition is made beforehand: made inside T1's held transaction, T2
    # would wait for it (the real append pool is autocommit and never holds it).
    db.execute("SELECT events_ensure_month(to_timestamp(%s / 1000.0))", (event()["ts_epoch"],))
    with (
        psycopg.connect(database_url) as t1_conn,
        psycopg.connect(database_url) as t2_conn,
    ):
        Receiver(HeldTransaction(t1_conn), spool).append(  # type: ignore[arg-type]
            "brevo", "webhook", [event("delivered", message_id=mid(1))]
        )
        Receiver(HeldTransaction(t2_conn), spool).append(  # type: ignore[arg-type]
            "brevo", "webhook", [event("delivered", message_id=mid(2))]
        )
        t2_conn.commit()
        (a_id,) = t1_conn.execute("SELECT id FROM events").fetchone()
        (b_id,) = db.execute("SELECT id FROM events").fetchone()
        assert b_id > a_id  # B is further in the log but committed first

        drain(folder)
        assert statuses(db) == {mid(2)[1:-1]: "delivered"}

        t1_conn.commit()
        drain(folder)
    assert statuses(db) == {mid(1)[1:-1]: "delivered", mid(2)[1:-1]: "delivered"}
    assert db.execute("SELECT count(*) FROM fold_queue").fetchone() == (0,)


def test_projector_waits_for_the_message_lock_then_reads_fresh(receiver, db, folder):
    """A second projector on the same message must wait for the first and then see what
    was committed meanwhile; under REPEATABLE READ or without the lock it would write
    the older state."""
    key = ("brevo", mid(3)[1:-1], "client@example.com")
    receiver.append("brevo", "webhook", [event("request", message_id=mid(3), ts_epoch=BASE_MS)])
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(key),))
        done = threading.Event()
        worker = threading.Thread(target=lambda: (project_batch(folder), done.set()))
        worker.start()
        assert not done.wait(0.5), "the projector did not wait for the message lock"
        receiver.append("brevo", "webhook", [event("delivered", message_id=mid(3))])
    worker.join(5)
    assert done.is_set()
    assert statuses(db) == {key[1]: "delivered"}


def test_message_folded_over_several_batches(receiver, db, folder):
    steps = [
        ("request", BASE_MS, "requested"),
        ("deferred", BASE_MS + 1000, "deferred"),
        ("delivered", BASE_MS + 60_000, "delivered"),
        ("unique_opened", BASE_MS + 120_000, "opened"),
        ("opened", BASE_MS + 180_000, "opened"),
        ("hard_bounce", BASE_MS + 90_000, "opened"),  # late, lower precedence than an open
    ]
    for name, ts, expected in steps:
        receiver.append("brevo", "webhook", [event(name, message_id=mid(4), ts_epoch=ts)])
        # Another message in the same queue, so that batches of one split them.
        receiver.append("brevo", "webhook", [event(name, message_id=mid(5), ts_epoch=ts)])
        assert project_batch(folder, limit=1).messages == 1  # the oldest queue row: mid(4)
        assert statuses(db)[mid(4)[1:-1]] == expected
        assert project_batch(folder, limit=1).messages == 1
    assert projection(db) == folded_from_the_log(db)
    row = db.execute(
        "SELECT opens, sent_at = to_timestamp(%s / 1000.0), first_delivered_at IS NOT NULL"
        " FROM messages WHERE message_id = %s",
        (BASE_MS, mid(4)[1:-1]),
    ).fetchone()
    assert row == (2, True, True)


def test_message_with_only_unknown_events_has_no_status(receiver, db, folder):
    receiver.append("brevo", "webhook", [event("some_future_event", message_id=mid(6))])
    drain(folder)
    row = db.execute(
        "SELECT m.status, m.sent_at = e.received_at FROM messages m JOIN events e USING"
        " (provider, message_id, recipient)"
    ).fetchone()
    assert row == (None, True)


def test_concurrent_projectors_end_with_the_fold_of_the_log(receiver, database_url, db):
    projectors = [Projector(database_url, batch_size=3, poll_interval=0.05) for _ in range(4)]
    for projector in projectors:
        projector.start()
    bodies = random_requests(seed=7, messages=12, events=400)
    appenders = [
        threading.Thread(target=append_all, args=(receiver, bodies[i::4])) for i in range(4)
    ]
    try:
        for thread in appenders:
            thread.start()
        for thread in appenders:
            thread.join()
        assert wait_for(lambda: db.execute("SELECT count(*) FROM fold_queue").fetchone() == (0,))
    finally:
        for projector in projectors:
            projector.stop()
    assert sum(p.folded for p in projectors) > 0
    assert [p.failures for p in projectors] == [0, 0, 0, 0]  # no deadlock, no retry
    assert projection(db) == folded_from_the_log(db)
    assert len(projection(db)) > 12  # several recipients per message-id


def test_thread_wakes_on_notify(make_app, client, auth_headers, db):
    app = make_app(DISTRIBMAIL_PROJECTOR_POLL="30")
    client = app.test_client()
    time.sleep(0.3)  # let it connect, drain the empty queue and start waiting
    body = [event("delivered", message_id=mid(8))]
    assert client.post("/webhooks/brevo", json=body, headers=auth_headers).status_code == 200
    # Well under the 30 s poll: only the NOTIFY can have woken it.
    assert wait_for(lambda: statuses(db) == {mid(8)[1:-1]: "delivered"}, timeout=3)


def test_readyz_reports_projection_lag(client):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert wait_for(lambda: "queue_length" in client.get("/readyz").get_json()["projection"])
    detail = client.get("/readyz").get_json()["projection"]
    assert detail["ok"] is True and detail["queue_length"] == 0


def test_projector_off_leaves_the_queue_and_reports_nothing(make_app, auth_headers, db):
    app = make_app(DISTRIBMAIL_PROJECTOR="off")
    client = app.test_client()
    client.post("/webhooks/brevo", json=[event(message_id=mid(9))], headers=auth_headers)
    time.sleep(0.3)
    assert "projection" not in client.get("/readyz").get_json()
    assert statuses(db) == {}
    lag = read_lag(db)
    assert lag.queue_length == 1 and lag.oldest_age_seconds >= 0


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, True),
        ({"DISTRIBMAIL_PROJECTOR": "off"}, False),
        ({"DISTRIBMAIL_PROJECTOR": "ON"}, True),
    ],
    ids=["default-on", "off", "upper-case-on"],
)
def test_projector_switch(env, enabled):
    assert ProjectorSettings.from_env(env).enabled is enabled


@pytest.mark.parametrize(
    "env",
    [{"DISTRIBMAIL_PROJECTOR": "maybe"}, {"DISTRIBMAIL_PROJECTOR_BATCH": "0"}],
    ids=["unknown-switch", "empty-batch"],
)
def test_projector_settings_refused(env):
    with pytest.raises(ConfigError, match="DISTRIBMAIL_PROJECTOR"):
        ProjectorSettings.from_env(env)


def test_worker_folds_and_stops_on_sigterm(receiver, database_url, db, tmp_path):
    receiver.append("brevo", "webhook", [event("delivered", message_id=mid(10))])
    env = {**os.environ, "DISTRIBMAIL_DATABASE_URL": database_url,
           "DISTRIBMAIL_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    code = "import argparse; from query.worker import run_worker; run_worker(argparse.Namespace())"
    worker = subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=Path(__file__).parent.parent
    )
    try:
        assert wait_for(lambda: statuses(db) == {mid(10)[1:-1]: "delivered"}, timeout=10)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=5) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
