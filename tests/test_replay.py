"""Replay on real PostgreSQL: the rebuilt projection equals the live one, nothing that
arrives meanwhile is lost, dry runs touch nothing, a killed replay leaves no damage."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings

from ingest.database import apply_schema
from query.logged import DETAIL_KEYS
from query.progress import StderrProgress
from query.projection import UNREAD_KEYS, message_key_id, message_row
from query.projector import Projector, drain
from query.replay import REPLAY_LOCK_KEY, ReplayRunning, replay, run_replay
from tests import test_projector
from tests.payloads import event
from tests.test_fold import messages
from tests.test_projector import (
    append_all,
    folded_from_the_log,
    mid,
    projection,
    random_requests,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent

# The projector tests' fixtures: an appender on the production path, a folding connection.
receiver = test_projector.receiver
folder = test_projector.folder


def table_exists(db: psycopg.Connection, name: str) -> bool:
    return db.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def indexes(db: psycopg.Connection) -> list[tuple[str, str]]:
    return db.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'messages' ORDER BY 1"
    ).fetchall()


def queue_length(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM fold_queue").fetchone()[0]


@pytest.mark.parametrize("seed", [1, 2, 3], ids=lambda s: f"seed-{s}")
def test_rebuilt_projection_equals_the_live_one(receiver, folder, db, database_url, seed):
    append_all(receiver, random_requests(seed))
    drain(folder, batch_size=7)
    live = projection(db)
    assert len(live) > 20

    report = replay(database_url)

    assert projection(db) == live  # row by row, every column but folded_at
    assert live == folded_from_the_log(db)
    keyed = db.execute("SELECT count(*) FROM events WHERE message_id IS NOT NULL").fetchone()[0]
    assert (report.events, report.messages, report.dry_run) == (keyed, len(live), False)
    assert not table_exists(db, "messages_rebuild")


def test_workers_fold_the_same_projection(receiver, folder, db, database_url):
    append_all(receiver, random_requests(11))
    drain(folder, batch_size=7)
    live, before = projection(db), indexes(db)

    report = replay(database_url, workers=3)  # key ranges cut from a sample of the log

    assert projection(db) == live
    assert report.messages == len(live)
    assert indexes(db) == before  # built after the COPY, renamed by the swap


def test_trimmed_payloads_fold_to_the_same_row():
    assert not set(UNREAD_KEYS) & DETAIL_KEYS

    @settings(deadline=None, max_examples=300)
    @given(messages(max_size=16))
    def same_row(rows):
        if not rows:
            return
        trimmed = [
            replace(r, payload={k: v for k, v in r.payload.items() if k not in UNREAD_KEYS})
            for r in rows
        ]
        key = (rows[0].provider, rows[0].message_id, rows[0].recipient)
        assert message_row(key, trimmed) == message_row(key, rows)

    same_row()


def test_schema_stays_idempotent_after_the_swap(receiver, folder, db, database_url):
    append_all(receiver, random_requests(4, messages=5, events=30))
    drain(folder)
    before = indexes(db)
    replay(database_url)
    assert indexes(db) == before  # same names, same definitions
    apply_schema(database_url)
    assert indexes(db) == before  # no duplicate built under the schema.sql names
    constraints = db.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'messages'::regclass"
        " AND contype IN ('p', 'u') ORDER BY 1"
    ).fetchall()
    assert constraints == [("messages_key_unique",), ("messages_pkey",)]
    replay(database_url)  # and a second replay swaps again
    assert indexes(db) == before


def test_dry_run_reports_changes_and_touches_nothing(receiver, folder, db, database_url):
    for n in range(5):
        receiver.append("brevo", "webhook", [event("delivered", message_id=mid(n))])
    drain(folder)
    # Arrives while no projector runs: only the log and the queue know.
    for n in range(3):
        receiver.append("brevo", "webhook", [event("hard_bounce", message_id=mid(n),
                                                   ts_epoch=1_900_000_000_000)])  # fmt: skip
    receiver.append("brevo", "webhook", [event("request", message_id=mid(7))])
    receiver.append("brevo", "webhook", [event("delivered", message_id=mid(4))])  # a retry
    # A new row without a status: a change, but not a change of status.
    receiver.append("brevo", "webhook", [event("some_future_event", message_id=mid(8))])
    live, queued = projection(db), queue_length(db)

    report = replay(database_url, dry_run=True, changes_shown=2)

    assert report.dry_run and report.status_changes == 4 and len(report.changes) == 2
    assert report.other_changes == 1
    full = replay(database_url, dry_run=True, changes_shown=10)
    recipient = "client@example.com"
    expected = {(message_key_id("brevo", mid(n)[1:-1], recipient), "delivered", "hard_bounced")
                for n in range(3)}  # fmt: skip
    expected.add((message_key_id("brevo", mid(7)[1:-1], recipient), None, "requested"))
    assert {(c.id, c.old, c.new) for c in full.changes} == expected
    assert projection(db) == live and queue_length(db) == queued
    assert not table_exists(db, "messages_rebuild")


def test_nothing_arriving_during_the_replay_is_missed(receiver, db, database_url):
    append_all(receiver, random_requests(5, messages=40, events=400))
    projector = Projector(database_url, batch_size=5, poll_interval=0.05)
    projector.start()
    more = random_requests(6, messages=60, events=600)
    stop = threading.Event()

    def keep_appending() -> None:
        for body in more:
            receiver.append("brevo", "webhook", body)
            if stop.is_set():
                return
            time.sleep(0.002)

    appender = threading.Thread(target=keep_appending)
    try:
        assert wait_for(lambda: queue_length(db) == 0)
        appender.start()
        # Slowed down so that appends land during the rebuild, and the live projector
        # folds some of them (deleting their queue rows) before the swap.
        report = replay(database_url, progress=lambda done, total: time.sleep(0.003))
        stop.set()
        appender.join()
        assert wait_for(lambda: queue_length(db) == 0)
    finally:
        stop.set()
        projector.stop()
    assert report.caught_up > 0
    assert projector.failures == 0  # it went on writing, into the new table after the swap
    assert projection(db) == folded_from_the_log(db)


def test_killed_replay_leaves_the_projection_and_a_rerun_completes(
    receiver, folder, db, database_url
):
    append_all(receiver, random_requests(8, messages=30, events=300))
    drain(folder)
    live = projection(db)
    code = (
        "import os, signal, sys; from query.replay import replay\n"
        "def progress(done, total):\n"
        "    if done > total // 2: os.kill(os.getpid(), signal.SIGKILL)\n"
        "replay(sys.argv[1], progress=progress, fetch_size=20)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, database_url], cwd=ROOT, timeout=60)
    assert killed.returncode == -9
    assert table_exists(db, "messages_rebuild")  # stale, half-built
    assert projection(db) == live

    report = replay(database_url)
    assert report.messages == len(live)
    assert projection(db) == live
    assert not table_exists(db, "messages_rebuild")


def test_second_replay_at_once_is_refused(db, database_url):
    db.execute("SELECT pg_advisory_lock(%s)", (REPLAY_LOCK_KEY,))
    with pytest.raises(ReplayRunning, match="another replay"):
        replay(database_url)
    db.execute("SELECT pg_advisory_unlock(%s)", (REPLAY_LOCK_KEY,))


def _peak_memory(receiver, folder, database_url, first: int, events: int) -> int:
    payloads = [event("delivered", message_id=mid(first + n), subject="x" * 400)
                for n in range(events)]  # fmt: skip
    append_all(receiver, [payloads[i : i + 50] for i in range(0, events, 50)])
    # A projection folded long ago: nothing to catch up, only the stream is measured.
    drain(folder)
    folder.execute("UPDATE messages SET folded_at = folded_at - interval '1 hour'")
    tracemalloc.start()
    try:
        replay(database_url, fetch_size=50)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_log(receiver, folder, database_url):
    small = _peak_memory(receiver, folder, database_url, 0, 100)
    large = _peak_memory(receiver, folder, database_url, 100, 1000)  # 11 times the log
    assert large < 2 * small, (small, large)


def test_progress_line_counts_events():
    stream = io.StringIO()
    progress = StderrProgress(stream=stream, log_every=0)
    progress(500, 1000)
    progress(1000, 1000)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("replay: 500/1,000 events (50%)") and "ETA" in lines[0]
    assert lines[1].startswith("replay: 1,000 events in ")


def test_replay_command_dry_run(receiver, database_url, db, monkeypatch, capsys):
    receiver.append("brevo", "webhook", [event("delivered", message_id=mid(1))])
    monkeypatch.setenv("DISTRIBMAIL_DATABASE_URL", database_url)
    assert run_replay(argparse.Namespace(dry_run=True, show=5, quiet=True)) == 0
    out = capsys.readouterr().out
    assert "1 message(s) would change status" in out
    assert f"{message_key_id('brevo', mid(1)[1:-1], 'client@example.com')}  - -> delivered" in out
    assert projection(db) == {}


def test_replay_progress_reaches_the_total(receiver, database_url):
    append_all(receiver, random_requests(9, messages=10, events=50))
    calls: list[tuple[int, int]] = []
    report = replay(database_url, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (report.events, report.events)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert os.environ.get("DISTRIBMAIL_PROJECTOR") is None  # nothing leaked between tests
