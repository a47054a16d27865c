"""Which mails belong to which day: days are cut on the wall clock of the configured zone
(Europe/Paris by default), including the two days a year that are not 24 hours long."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from flask.testing import FlaskClient
from freezegun import freeze_time

from query.reads import Period
from tests.api_support import insert_message, read_api

PARIS = ZoneInfo("Europe/Paris")
MICROSECOND = timedelta(microseconds=1)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
def api(app_config: dict[str, str]) -> Iterator[FlaskClient]:
    with read_api(app_config) as client:
        yield client


def listed(api: FlaskClient, query: str) -> list[str]:
    response = api.get(f"/api/messages?{query}&limit=1000")
    assert response.status_code == 200, response.json
    return [item["subject"] for item in response.json["items"]]


# --- the period as instants ----------------------------------------------------------------

# (day, its first instant, the first instant after it, its length in hours): spring is the
# day of 23 hours, fall the day of 25.
DAYS = [
    pytest.param(date(2026, 3, 8), utc(2026, 3, 7, 23), utc(2026, 3, 8, 23), 24, id="winter"),
    pytest.param(date(2026, 3, 29), utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 23, id="spring"),
    pytest.param(date(2026, 7, 14), utc(2026, 7, 13, 22), utc(2026, 7, 14, 22), 24, id="summer"),
    pytest.param(date(2026, 10, 25), utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 25, id="fall"),
]  # fmt: skip


@pytest.mark.parametrize(("day", "start", "end", "hours"), DAYS)
def test_a_paris_day_runs_from_local_midnight_to_local_midnight(
    day: date, start: datetime, end: datetime, hours: int
) -> None:
    period = Period(day, day, PARIS)
    assert (period.start, period.end) == (start, end)
    assert period.end - period.start == timedelta(hours=hours)


def test_a_range_spans_both_changes_of_its_days() -> None:
    period = Period(date(2026, 3, 28), date(2026, 3, 30), PARIS)
    assert period.start == utc(2026, 3, 27, 23)
    assert period.end == utc(2026, 3, 30, 22)
    assert period.days == 3


def test_days_in_utc_are_plain_24_hours() -> None:
    period = Period(date(2026, 3, 29), date(2026, 3, 29), ZoneInfo("UTC"))
    assert (period.start, period.end) == (utc(2026, 3, 29), utc(2026, 3, 30))


# --- through the API, on real rows ----------------------------------------------------------


@pytest.mark.parametrize(("day", "start", "end", "hours"), DAYS)
def test_the_list_holds_exactly_the_mails_between_the_two_midnights(
    api: FlaskClient, db: psycopg.Connection, day: date, start: datetime, end: datetime, hours: int
) -> None:
    insert_message(db, start - MICROSECOND, subject="day before, last instant")
    insert_message(db, start, subject="first instant")
    insert_message(db, end - MICROSECOND, subject="last instant")
    insert_message(db, end, subject="day after, first instant")

    assert listed(api, f"from={day}&to={day}") == ["last instant", "first instant"]
    counts = api.get(f"/api/messages/counts?from={day}").json
    assert counts["total"] == 2


def test_a_mail_sent_at_2330_utc_on_7_march_belongs_to_8_march(
    api: FlaskClient, db: psycopg.Connection
) -> None:
    insert_message(db, utc(2026, 3, 7, 23, 30), subject="late evening in UTC")

    assert listed(api, "from=2026-03-07&to=2026-03-07") == []
    assert listed(api, "from=2026-03-08&to=2026-03-08") == ["late evening in UTC"]


def test_the_hour_that_happens_twice_in_october_belongs_to_its_day_both_times(
    api: FlaskClient, db: psycopg.Connection
) -> None:
    # 02:30 happens at 00:30 UTC (summer time) and again at 01:30 UTC (winter time).
    insert_message(db, utc(2026, 10, 25, 0, 30), subject="02:30 CEST")
    insert_message(db, utc(2026, 10, 25, 1, 30), subject="02:30 CET")
    insert_message(db, utc(2026, 10, 25, 22, 30), subject="23:30 CET")

    assert listed(api, "from=2026-10-25") == ["23:30 CET", "02:30 CET", "02:30 CEST"]
    assert listed(api, "from=2026-10-24") == []
    assert listed(api, "from=2026-10-26") == []


def test_the_configured_time_zone_cuts_the_days(
    app_config: dict[str, str], db: psycopg.Connection
) -> None:
    insert_message(db, utc(2026, 3, 7, 23, 30), subject="late evening in UTC")
    with read_api(app_config, DISTRIBMAIL_TIMEZONE="UTC") as api:
        assert listed(api, "from=2026-03-07") == ["late evening in UTC"]
        assert listed(api, "from=2026-03-08") == []


# --- "today" ------------------------------------------------------------------------------


def test_without_dates_the_list_is_today_in_paris(api: FlaskClient, db: psycopg.Connection) -> None:
    insert_message(db, utc(2026, 3, 7, 22, 59), subject="7 March in Paris")
    insert_message(db, utc(2026, 3, 7, 23, 5), subject="8 March in Paris")

    # 23:30 UTC on the 7th is already the 8th in Paris.
    with freeze_time("2026-03-07 23:30:00"):
        assert listed(api, "") == ["8 March in Paris"]
        counts = api.get("/api/messages/counts").json
    assert (counts["from"], counts["to"], counts["total"]) == ("2026-03-08", "2026-03-08", 1)


def test_without_dates_today_follows_the_configured_zone(
    app_config: dict[str, str], db: psycopg.Connection
) -> None:
    insert_message(db, utc(2026, 3, 7, 22, 59), subject="7 March in UTC")
    with read_api(app_config, DISTRIBMAIL_TIMEZONE="UTC") as api, freeze_time("2026-03-07 23:30"):
        assert listed(api, "") == ["7 March in UTC"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("from=2026-03-01", ("2026-03-01", "2026-03-01"), id="from-alone-is-one-day"),
        pytest.param("to=2026-03-01", ("2026-03-01", "2026-03-01"), id="to-alone-is-one-day"),
        pytest.param("", ("2026-03-08", "2026-03-08"), id="neither-is-today"),
        pytest.param("from=&to=", ("2026-03-08", "2026-03-08"), id="empty-values-are-absent"),
    ],
)
def test_missing_bounds(api: FlaskClient, query: str, expected: tuple[str, str]) -> None:
    with freeze_time("2026-03-07 23:30:00"):
        counts = api.get(f"/api/messages/counts?{query}").json
    assert (counts["from"], counts["to"]) == expected
