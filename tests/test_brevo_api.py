"""The Brevo API client against the fake Brevo (a real HTTP server), and how a pulled event
is keyed (ingest.providers.brevo_pull). No database here."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest.brevo_api import (
    BrevoAuthError,
    BrevoBadResponse,
    BrevoClient,
    BrevoSettings,
    BrevoUnavailable,
    events_page,
)
from ingest.errors import ConfigError
from ingest.providers import PROVIDERS, brevo
from tests.fake_brevo import API_KEY, FakeBrevo, make_events

FIXTURE = Path(__file__).parent / "fixtures" / "brevo" / "brevo_events_api.json"
T0 = datetime(2024, 5, 1, 8, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeBrevo]:
    server = FakeBrevo(events=make_events(40, T0, days=1)).start()
    yield server
    server.stop()


def make_client(fake: FakeBrevo, sleeps: list[float], key: str = API_KEY, **settings: Any):
    options = {"attempts": 4, "max_wait": 30.0, **settings}
    return BrevoClient(
        BrevoSettings(api_key=key, api_url=fake.url, **options),
        backoff=0.5,
        sleep=sleeps.append,  # the waits are asserted, not slept
    )


def test_a_refused_key_says_what_to_check(fake):
    client = make_client(fake, [], key="xkeysib-wrong")
    with pytest.raises(BrevoAuthError) as caught:
        client.get("/account")
    message = caught.value.message
    assert message.startswith("Brevo refused the API key (check DISTRIBMAIL_BREVO_API_KEY")
    assert "Key not found" in message  # Brevo's own words
    assert "xkeysib-wrong" not in message  # never echo a secret


def test_no_key_is_a_config_error():
    with pytest.raises(ConfigError, match="DISTRIBMAIL_BREVO_API_KEY is not set"):
        BrevoClient.from_env({})


def test_settings_from_env():
    settings = BrevoSettings.from_env(
        {"DISTRIBMAIL_BREVO_API_KEY": "k", "DISTRIBMAIL_BREVO_API_URL": "http://h:1/v3/"}
    )
    assert (settings.api_key, settings.api_url) == ("k", "http://h:1/v3")
    assert BrevoSettings.from_env({}).api_url == "https://api.brevo.com/v3"


def test_a_429_waits_for_brevo_s_reset(fake):
    fake.rate_limit_requests = {1}
    fake.rate_limit_reset = 7
    sleeps: list[float] = []
    page = events_page(make_client(fake, sleeps), "2024-05-01", "2024-05-01", 0, 10)
    assert len(page) == 10
    assert sleeps == [7.0]
    assert fake.events_requests == 2


def test_a_far_reset_is_capped_and_the_log_says_so(fake, caplog):
    fake.rate_limit_requests = {1, 2}
    fake.rate_limit_reset = 3600
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING, logger="ingest.brevo_api"):
        events_page(make_client(fake, sleeps, max_wait=5), "2024-05-01", "2024-05-01", 0, 10)
    assert sleeps == [5.0, 5.0]
    assert "reset in 3600s, waiting only 5s" in caplog.text


def test_server_errors_are_retried_with_backoff_then_reported(fake):
    fake.fail_after_pages = 0
    sleeps: list[float] = []
    with pytest.raises(BrevoUnavailable, match="after 4 attempts .*HTTP 500"):
        events_page(make_client(fake, sleeps), "2024-05-01", "2024-05-01", 0, 10)
    assert sleeps == [0.5, 1.0, 2.0]
    assert fake.events_requests == 4


def test_an_unreachable_brevo_is_retried_then_reported(fake):
    fake.stop()
    sleeps: list[float] = []
    with pytest.raises(BrevoUnavailable, match="cannot reach Brevo"):
        make_client(fake, sleeps, attempts=2).get("/account")
    assert sleeps == [0.5]


@pytest.mark.parametrize("kind", ["not-json", "events-not-list", "item-not-object"])
def test_a_malformed_page_is_a_bad_response(fake, kind):
    fake.malformed = {0: 1}
    fake.malformed_kind = kind
    with pytest.raises(BrevoBadResponse, match="not JSON|not a list|item 2 of `events` is a str"):
        events_page(make_client(fake, []), "2024-05-01", "2024-05-01", 0, 10)


def test_pages_are_oldest_first_and_end_empty(fake):
    client = make_client(fake, [])
    first = events_page(client, "2024-05-01", "2024-05-02", 0, 30)
    rest = events_page(client, "2024-05-01", "2024-05-02", 30, 30)
    assert len(first) + len(rest) == 40
    dates = [datetime.fromisoformat(e["date"]) for e in first + rest]
    assert dates == sorted(dates)
    assert events_page(client, "2024-05-01", "2024-05-02", 40, 30) == []


# --- keying a pulled event --------------------------------------------------------------

BASE = {
    "email": "John.Smith@Example.com",
    "date": "2017-03-12T12:30:00Z",
    "messageId": " <201798300811.5787683@example.domain.com> ",
    "event": "delivered",
}


def pulled(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in {**BASE, **changes}.items() if v is not None}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("2017-03-12T12:30:00Z", "2017-03-12T12:30:00+00:00", id="zulu"),
        pytest.param("2017-03-12T14:30:00+02:00", "2017-03-12T12:30:00+00:00", id="offset"),
        pytest.param("2017-03-12T12:30:00.987Z", "2017-03-12T12:30:00+00:00", id="truncated"),
        pytest.param("2017-03-12T12:30:00", "2017-03-12T12:30:00+00:00", id="naive-is-utc"),
    ],
)
def test_date_becomes_utc_to_the_second(raw, expected):
    event = PROVIDERS["brevo"].normalize(pulled(date=raw), "api")
    assert event.event_at is not None and event.event_at.isoformat() == expected
    assert event.problem is None


def test_keys_like_the_webhook():
    event = PROVIDERS["brevo"].normalize(pulled(link=" https://x.test/a "), "api")
    assert event.source == "api"
    assert event.message_id == brevo.normalize_message_id(BASE["messageId"])
    assert event.message_id == "201798300811.5787683@example.domain.com"
    assert event.recipient == "john.smith@example.com"
    assert (event.event, event.link) == ("delivered", "https://x.test/a")


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        pytest.param({"event": "hard_bounce"}, "unknown event 'hard_bounce'", id="webhook-name"),
        pytest.param({"event": None}, "no event name", id="no-event"),
        pytest.param({"messageId": None}, "no messageId", id="no-message-id"),
        pytest.param({"email": None}, "no recipient", id="no-email"),
        pytest.param({"date": None}, "no date", id="no-date"),
        pytest.param({"date": "12/03/2017"}, "is not an ISO 8601 date-time", id="bad-date"),
        pytest.param({"email": 42}, "email is not text but int", id="number-email"),
    ],
)
def test_what_we_cannot_read_is_flagged_not_raised(changes, problem):
    event = PROVIDERS["brevo"].normalize(pulled(**changes), "api")
    assert event.problem is not None and problem in event.problem


def test_every_published_example_is_understood():
    spec = json.loads(FIXTURE.read_text(encoding="utf-8"))
    events = [
        e for ex in spec["examples"] if ex.get("status", 200) == 200 for e in ex["body"]["events"]
    ]
    assert events
    for payload in events:
        assert PROVIDERS["brevo"].normalize(payload, "api").problem is None
    for name in spec["event_enum"]:
        assert PROVIDERS["brevo"].normalize(pulled(event=name), "api").problem is None


def test_webhook_payloads_are_untouched_by_the_dispatch():
    payload = {"event": "delivered", "email": "a@b.c", "message-id": "<m@x>", "ts_epoch": 1}
    assert PROVIDERS["brevo"].normalize(payload, "webhook").problem is None
    assert PROVIDERS["brevo"].normalize(payload, "api").problem is not None  # not its shape
