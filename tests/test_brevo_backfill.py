"""`distribmail backfill` against the fake Brevo and a real PostgreSQL: pages, rate limits,
resumption after an interruption, malformed pages, and the fold merging webhook + API."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from distribmail import brevo_cli
from ingest.backfill import Backfill, BackfillStopped, Chunk, split_range
from ingest.brevo_api import BrevoClient, BrevoSettings
from ingest.database import open_pool
from ingest.errors import BadRequest
from ingest.pipeline import Receiver
from ingest.spool import Spool
from query.fold import LoggedEvent, fold
from query.statuses import Status
from tests.fake_brevo import API_KEY, FakeBrevo, make_events
from tests.payloads import event

T0 = datetime(2024, 5, 1, 8, tzinfo=UTC)
DAY1, DAY3 = date(2024, 5, 1), date(2024, 5, 3)


@pytest.fixture
def fake() -> Iterator[FakeBrevo]:
    server = FakeBrevo(events=make_events(12_000, T0, days=2)).start()
    yield server
    server.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def brevo(fake, sleeps) -> BrevoClient:
    settings = BrevoSettings(api_key=API_KEY, api_url=fake.url, attempts=3)
    return BrevoClient(settings, backoff=0.01, sleep=sleeps.append)


@pytest.fixture
def receiver(database_url: str, tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(open_pool(database_url, size=2), Spool(tmp_path / "spool"))
    yield r
    r.close()


def job(brevo, receiver, start=DAY1, end=DAY3, **options) -> Backfill:
    options = {"page_size": 1000, "retry_pause": 0.0, **options}
    return Backfill(brevo, receiver, start, end, **options)


def api_rows(db) -> tuple[int, int]:
    """(rows with source api, distinct dedup keys among them)."""
    return db.execute(
        "SELECT count(*), count(DISTINCT dedup_key) FROM events WHERE source = 'api'"
    ).fetchone()


def what(e: dict) -> tuple[str, str, str]:
    return (e["messageId"], e["event"], e["date"])


def test_split_range_respects_brevo_s_90_days():
    chunks = split_range(date(2024, 1, 1), date(2024, 7, 1))
    assert chunks == [
        Chunk(date(2024, 1, 1), date(2024, 3, 30)),
        Chunk(date(2024, 3, 31), date(2024, 6, 28)),
        Chunk(date(2024, 6, 29), date(2024, 7, 1)),
    ]
    assert all((c.end - c.start).days + 1 <= 90 for c in chunks)
    assert split_range(DAY1, DAY1) == [Chunk(DAY1, DAY1)]


def test_12000_events_across_pages_and_a_429(fake, brevo, receiver, db, sleeps):
    fake.rate_limit_requests = {3}
    fake.rate_limit_reset = 2
    shown: list[tuple[float, str]] = []
    report = job(brevo, receiver, show=lambda f, text: shown.append((f, text))).run()
    assert (report.pages, report.received, report.stored) == (12, 12_000, 12_000)
    assert (report.duplicates, report.flagged, report.skipped) == (0, 0, [])
    assert sleeps == [2.0]  # the 429's reset, honoured
    assert api_rows(db) == (12_000, 12_000)
    assert shown[-1][0] == 1.0 and "events 12000" in shown[-1][1]
    assert [f for f, _ in shown] == sorted(f for f, _ in shown)


def test_running_it_twice_adds_nothing(brevo, receiver, db):
    job(brevo, receiver).run()
    again = job(brevo, receiver).run()
    assert again.restarted
    assert (again.received, again.stored, again.duplicates) == (12_000, 0, 12_000)
    assert api_rows(db) == (12_000, 12_000)


def test_a_crash_of_brevo_midway_is_resumed(fake, brevo, receiver, db):
    fake.fail_after_pages = 5
    with pytest.raises(BackfillStopped) as stopped:
        job(brevo, receiver).run()
    assert "Stopped at 2024-05-01..2024-05-03 offset 5000" in stopped.value.message
    assert "run the same command again to resume" in stopped.value.message
    assert api_rows(db) == (5_000, 5_000)

    fake.fail_after_pages = None
    served_before = fake.pages_served
    report = job(brevo, receiver).run()
    assert report.resumed_at == "2024-05-01..2024-05-03 offset 5000"
    assert (report.received, report.stored) == (7_000, 7_000)
    assert fake.pages_served - served_before == 8  # 7 pages and the empty one, no rereading
    assert api_rows(db) == (12_000, 12_000)


def test_ctrl_c_is_resumed_and_each_event_stored_once(brevo, receiver, db):
    def interrupt_after_three_pages(running: Backfill) -> None:
        if running.report.pages == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job(brevo, receiver, on_page=interrupt_after_three_pages).run()
    assert api_rows(db) == (3_000, 3_000)
    report = job(brevo, receiver).run()
    assert report.resumed_at is not None and report.stored == 9_000
    assert api_rows(db) == (12_000, 12_000)


def test_a_range_over_90_days_is_pulled_in_chunks(fake, brevo, receiver, db):
    fake.events = make_events(400, datetime(2024, 1, 1, 8, tzinfo=UTC), days=200)
    report = job(brevo, receiver, date(2024, 1, 1), date(2024, 7, 31)).run()
    assert report.stored == 400
    ranges = {(q["startDate"], q["endDate"]) for m, p, q in fake.log if p.endswith("/events")}
    assert len(ranges) == 3  # the fake refuses a range over 90 days, as Brevo does
    assert api_rows(db) == (400, 400)


@pytest.mark.parametrize("kind", ["not-json", "events-not-list", "item-not-object"])
def test_a_malformed_page_is_skipped_and_reported(fake, brevo, receiver, db, kind):
    fake.malformed = {2000: 99}
    fake.malformed_kind = kind
    report = job(brevo, receiver).run()
    (skipped,) = report.skipped
    assert (skipped.chunk, skipped.offset) == (Chunk(DAY1, DAY3), 2000)
    assert report.stored == 11_000
    # Everything but the skipped page's 1000 events, in the report's (date) order.
    in_order = sorted(fake.events, key=lambda e: datetime.fromisoformat(e["date"]))
    expected = {what(e) for e in in_order[:2000] + in_order[3000:]}
    assert {what(p) for (p,) in db.execute("SELECT payload FROM events")} == expected
    assert api_rows(db) == (11_000, 11_000)


def test_a_page_malformed_once_is_retried_not_skipped(fake, brevo, receiver, db):
    fake.malformed = {4000: 1}
    report = job(brevo, receiver).run()
    assert report.skipped == [] and report.stored == 12_000


def test_webhook_and_api_copies_fold_into_one_step(
    make_app, fake, brevo, receiver, db, auth_headers
):
    client = make_app().test_client()
    webhook = event("delivered", email="Client@Example.com", ts_epoch=1685543827372)
    assert client.post("/webhooks/brevo", json=webhook, headers=auth_headers).status_code == 200
    # The same delivery in the report: same second (14:37:07 UTC, here as +02:00), no ms.
    fake.events = [
        {
            "email": "client@example.com",
            "date": "2023-05-31T16:37:07+02:00",
            "messageId": webhook["message-id"],
            "event": "delivered",
            "subject": "Devis 2026-118",
            "from": "atelier@example.test",
        }
    ]
    assert job(brevo, receiver, date(2023, 5, 31), date(2023, 5, 31)).run().stored == 1

    rows = db.execute(
        "SELECT id, provider, source, event, event_at, received_at, message_id, recipient,"
        " payload, problem FROM events ORDER BY id"
    ).fetchall()
    logged = [LoggedEvent(*row) for row in rows]
    assert [e.source for e in logged] == ["webhook", "api"]
    state = fold(logged)
    (step,) = state.steps
    assert step.status == Status.DELIVERED
    assert step.at == datetime(2023, 5, 31, 14, 37, 7, 372000, tzinfo=UTC)
    assert step.sources == ("webhook", "api")


def test_backfill_command(fake, database_url, monkeypatch, tmp_path, capsys):
    fake.events = make_events(2_600, T0, days=2)
    for name, value in {
        "BREVO_API_KEY": API_KEY,
        "BREVO_API_URL": fake.url,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv("DISTRIBMAIL_" + name, value)
    parser = argparse.ArgumentParser()
    brevo_cli.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["backfill", "--from", "2024-05-01", "--to", "2024-05-03", "--page-size", "1000"]
    )
    assert args.run(args) == 0
    out, err = capsys.readouterr()
    assert "pages: 3, events received: 2600, stored: 2600, duplicates: 0" in out
    assert "[############################] 100%" in err


@pytest.mark.parametrize(
    ("start", "end", "options", "message"),
    [
        pytest.param(DAY3, DAY1, {}, "--from 2024-05-03 is after --to 2024-05-01", id="reversed"),
        pytest.param(DAY1, DAY3, {"page_size": 6000}, "between 1 and 5000", id="page-too-big"),
    ],
)
def test_wrong_arguments_are_refused(brevo, receiver, start, end, options, message):
    with pytest.raises(BadRequest, match=message):
        job(brevo, receiver, start, end, **options)


def test_pages_skipped_before_an_interruption_are_still_reported(fake, brevo, receiver):
    fake.malformed = {1000: 99}
    fake.fail_after_pages = 4
    with pytest.raises(BackfillStopped):
        job(brevo, receiver).run()
    fake.fail_after_pages = None
    report = job(brevo, receiver).run()
    assert [(s.offset, s.reason) for s in report.skipped] == [
        (1000, "skipped by an earlier run of this range")
    ]
    assert report.stored == 12_000 - 1000 - 4 * 1000


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream_type", [io.StringIO, _Terminal], ids=["pipe", "terminal"])
def test_the_progress_bar_is_plain_text(stream_type):
    stream = stream_type()
    bar = brevo_cli.ProgressBar(stream, width=10)
    for step in range(1, 21):
        bar.show(step / 20, f"page {step}")
    bar.finish()
    text = stream.getvalue()
    assert text.endswith("[##########] 100%  page 20\n")
    if stream_type is _Terminal:
        assert text.count("\r") == 20 and text.count("\n") == 1
    else:
        assert "\r" not in text and text.count("\n") == 11  # a line per tenth, 0 to 10
