"""Reconciliation against the fake Brevo and a real PostgreSQL: what the webhook missed is
appended and counted; what it brought is appended too (the fold merges it) but not counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest import reconcile as reconciliation
from ingest.brevo_api import BrevoClient, BrevoSettings
from ingest.database import open_pool
from ingest.pipeline import Receiver
from ingest.reconcile import Reconciler, reconcile
from ingest.spool import Spool
from tests.fake_brevo import API_KEY, FakeBrevo
from tests.payloads import event

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
T = datetime(2024, 5, 2, 10, 0, tzinfo=UTC)


def pulled(name: str, message: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "email": f"{message}@example.com",
        "messageId": f"<{message}@relay.test>",
        "event": name,
        "date": at.isoformat().replace("+00:00", "Z"),
        **extra,
    }


def pushed(name: str, message: str, at: datetime) -> dict[str, Any]:
    millis = int(at.timestamp() * 1000)
    return event(
        name, email=f"{message}@example.com", message_id=f"<{message}@relay.test>", ts_epoch=millis
    )


S = timedelta(seconds=1)
MS = timedelta(milliseconds=1)
REPORT = [
    pulled("requests", "a", T),
    pulled("delivered", "a", T + 2 * S),  # both pushed too
    pulled("requests", "b", T),
    pulled("delivered", "b", T + 3 * S),  # delivery lost
    pulled("requests", "c", T),
    pulled("delivered", "c", T + S),  # all lost
    pulled("opened", "c", T + 90 * S, ip="203.0.113.7"),
    pulled("opened", "d", T + 5 * S),  # pushed as unique_opened, 900 ms into that second
    pulled("someNewEvent", "h", T),  # stored, flagged, never counted
    pulled("delivered", "e", datetime(2024, 5, 1, 9, 0, tzinfo=UTC)),  # before the window
    pulled("delivered", "f", NOW - 5 * timedelta(minutes=1)),  # inside the settle margin
]
WEBHOOKS = [
    pushed("request", "a", T + 250 * MS),
    pushed("delivered", "a", T + 2 * S + 10 * MS),
    pushed("request", "b", T + 400 * MS),
    pushed("unique_opened", "d", T + 5 * S + 900 * MS),
]


@pytest.fixture
def fake() -> Iterator[FakeBrevo]:
    server = FakeBrevo(events=list(REPORT)).start()
    yield server
    server.stop()


@pytest.fixture
def brevo(fake) -> BrevoClient:
    return BrevoClient(BrevoSettings(api_key=API_KEY, api_url=fake.url), backoff=0.01)


@pytest.fixture
def receiver(database_url: str, tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(open_pool(database_url, size=2), Spool(tmp_path / "spool"))
    yield r
    r.close()


def test_counts_what_the_webhook_missed(brevo, receiver, db, fake):
    receiver.append("brevo", "webhook", WEBHOOKS)
    before = reconciliation.missed_by_webhook_total()
    result = reconcile(brevo, receiver, hours=24, settle=timedelta(minutes=10), now=NOW)
    assert (result.pulled, result.in_window, result.stored) == (11, 9, 9)
    assert result.missed_by_webhook == 4  # b's delivery, c's three steps
    assert reconciliation.missed_by_webhook_total() - before == 4
    # Yesterday and today: the report's dates are whole days.
    (query,) = [q for _, path, q in fake.log if path.endswith("/events")][:1]
    assert (query["startDate"], query["endDate"], query["sort"]) == (
        "2024-05-01",
        "2024-05-02",
        "asc",
    )
    stored = db.execute(
        "SELECT message_id FROM events WHERE source = 'api' ORDER BY message_id"
    ).fetchall()
    assert {m for (m,) in stored} == {f"{x}@relay.test" for x in "abcdh"}


def test_a_second_run_finds_nothing_new(brevo, receiver):
    first = reconcile(brevo, receiver, now=NOW)
    second = reconcile(brevo, receiver, now=NOW + timedelta(minutes=30))
    assert first.missed_by_webhook == 8  # no webhook at all: every known step missed
    assert (second.stored, second.missed_by_webhook) == (1, 1)  # f, out of its margin now


def test_a_webhook_that_comes_later_is_not_counted_again(brevo, receiver):
    reconcile(brevo, receiver, now=NOW)
    receiver.append("brevo", "webhook", [pushed("delivered", "b", T + 3 * S + 5 * MS)])
    assert reconcile(brevo, receiver, now=NOW).stored == 0


def test_the_reconciler_is_off_without_a_key(receiver):
    assert Reconciler.from_env(receiver, {}) is None
    env = {"DISTRIBMAIL_BREVO_API_KEY": "k", "DISTRIBMAIL_RECONCILE_EVERY": "0"}
    assert Reconciler.from_env(receiver, env) is None


def test_the_reconciler_runs_and_survives_failures(receiver, fake):
    env = {
        "DISTRIBMAIL_BREVO_API_KEY": API_KEY,
        "DISTRIBMAIL_BREVO_API_URL": fake.url,
        "DISTRIBMAIL_RECONCILE_EVERY": "0.001",
    }
    worker = Reconciler.from_env(receiver, env)
    assert worker is not None
    runs, failures = reconciliation.counters()["runs"], reconciliation.counters()["failures"]
    fake.api_key = "rotated"  # every run now fails with a refused key
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while reconciliation.counters()["failures"] < failures + 2:
            assert time.monotonic() < deadline, "the reconciler stopped after a failure"
            time.sleep(0.02)
        fake.api_key = API_KEY
        while reconciliation.counters()["runs"] == runs:
            assert time.monotonic() < deadline, "the reconciler never ran"
            time.sleep(0.02)
    finally:
        worker.stop(timeout=5)
