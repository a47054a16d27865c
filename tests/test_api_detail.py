"""GET /api/messages/<id>: the summary row and every step, folded from the log at request
time, with the raw payloads merged into each step.

The rows get there the production way: Brevo payloads normalized and appended by ingest,
then the projector drains the fold queue into `messages`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from ingest.database import open_pool
from ingest.providers import brevo
from ingest.recorder import insert_events
from query.projection import message_key_id
from query.projector import drain
from tests.api_support import message_key_id as helper_key_id
from tests.api_support import read_api

MESSAGE_ID = "<202603081107.41427155811@smtp-relay.mailin.fr>"
RECIPIENT = "Marie.Dupont@Example.fr"
T0 = int(datetime(2026, 3, 8, 11, 7, 0, tzinfo=UTC).timestamp() * 1000)  # ts_epoch, ms


def brevo_event(event: str, ms_after: int, **extra: Any) -> dict[str, Any]:
    """A transactional webhook payload as Brevo sends it (brevo.md section 1)."""
    return {
        "event": event,
        "email": RECIPIENT,
        "id": 1234567,
        "message-id": MESSAGE_ID,
        "ts_epoch": T0 + ms_after,
        "subject": "Votre devis D-2026-031",
        "tag": '["devis"]',
        "sender_email": "devis@atelier.example",
        **extra,
    }


REQUEST = brevo_event("request", 0, sending_ip="185.41.28.109")
DELIVERED = brevo_event("delivered", 2_500, sending_ip="185.41.28.109")
# Before late 2023 Brevo fired both on the first open, same instant: one step.
FIRST_OPEN = brevo_event("unique_opened", 60_000, sending_ip="66.249.84.1", user_agent="Mozilla")
FIRST_OPEN_TWIN = brevo_event("opened", 60_000, sending_ip="66.249.84.1", user_agent="Mozilla")
CLICK = brevo_event(
    "click", 120_000, link="https://atelier.example/devis/31", sending_ip="90.12.1.1"
)
UNKNOWN = brevo_event("list_addition", 180_000)
OTHER_RECIPIENT = {**DELIVERED, "email": "compta@example.fr"}

PAYLOADS = [CLICK, DELIVERED, UNKNOWN, FIRST_OPEN_TWIN, REQUEST, FIRST_OPEN, OTHER_RECIPIENT]

KEY = ("brevo", MESSAGE_ID.strip("<>"), RECIPIENT.lower())


@pytest.fixture
def api(app_config: dict[str, str]) -> Iterator[FlaskClient]:
    with read_api(app_config) as client:
        yield client


@pytest.fixture
def logged(database_url: str, db: psycopg.Connection) -> str:
    """The payloads appended by ingest and folded by the projector; the message's id."""
    pool = open_pool(database_url, size=1, name="test-ingest")
    try:
        pool.wait()
        assert insert_events(pool, [brevo.normalize(p) for p in PAYLOADS]) == len(PAYLOADS)
    finally:
        pool.close()
    drain(db)
    return message_key_id(*KEY)


def test_the_helper_computes_the_projection_id(logged: str, db: psycopg.Connection) -> None:
    assert logged == helper_key_id(*KEY)
    row = db.execute("SELECT id FROM messages WHERE recipient = %s", (KEY[2],)).fetchone()
    assert row == (logged,)


def test_the_detail_is_the_list_item_plus_its_steps(api: FlaskClient, logged: str) -> None:
    (item,) = [
        i
        for i in api.get("/api/messages?from=2026-03-08").json["items"]
        if i["recipient"] == KEY[2]
    ]
    detail = api.get(f"/api/messages/{logged}").json

    assert {k: v for k, v in detail.items() if k != "steps"} == item
    assert item["id"] == logged
    assert item["message_id"] == KEY[1]
    assert (item["status"], item["status_label"]) == ("clicked", "Cliqué")
    assert (item["opens"], item["clicks"]) == (1, 1)
    assert item["tags"] == ["devis"]
    assert item["sent_at"] == "2026-03-08T11:07:00+00:00"


def test_every_step_in_order_with_its_details(api: FlaskClient, logged: str) -> None:
    steps = api.get(f"/api/messages/{logged}").json["steps"]

    assert [(s["at"], s["status"], s["label"], s["event"], s["source"]) for s in steps] == [
        ("2026-03-08T11:07:00+00:00", "requested", "Requête", "request", "webhook"),
        ("2026-03-08T11:07:02.500000+00:00", "delivered", "Délivré", "delivered", "webhook"),
        ("2026-03-08T11:08:00+00:00", "opened", "Ouvert", "opened", "webhook"),
        ("2026-03-08T11:09:00+00:00", "clicked", "Cliqué", "click", "webhook"),
        ("2026-03-08T11:10:00+00:00", None, None, "list_addition", "webhook"),
    ]
    opened, click, unknown = steps[2], steps[3], steps[4]
    assert (opened["ip"], opened["user_agent"], opened["link"]) == ("66.249.84.1", "Mozilla", None)
    assert (click["link"], click["ip"]) == ("https://atelier.example/devis/31", "90.12.1.1")
    assert "list_addition" in unknown["problem"]
    assert steps[0]["problem"] is None


def test_each_step_shows_the_raw_payloads_it_merged(api: FlaskClient, logged: str) -> None:
    steps = api.get(f"/api/messages/{logged}").json["steps"]

    assert steps[0]["payloads"] == [REQUEST]
    assert steps[1]["payloads"] == [DELIVERED]
    # The two open events of the same instant are one step, both payloads behind it.
    assert sorted(steps[2]["payloads"], key=lambda p: p["event"]) == [FIRST_OPEN_TWIN, FIRST_OPEN]
    assert steps[3]["payloads"] == [CLICK]
    assert steps[4]["payloads"] == [UNKNOWN]


def test_the_detail_in_english(api: FlaskClient, logged: str) -> None:
    detail = api.get(f"/api/messages/{logged}?lang=en").json
    assert detail["status_label"] == "Clicked"
    assert [s["label"] for s in detail["steps"]] == [
        "Request",
        "Delivered",
        "Opened",
        "Clicked",
        None,
    ]


def test_another_recipient_of_the_same_mail_is_its_own_message(
    api: FlaskClient, logged: str
) -> None:
    other = message_key_id("brevo", KEY[1], "compta@example.fr")
    detail = api.get(f"/api/messages/{other}").json
    assert detail["recipient"] == "compta@example.fr"
    assert [s["payloads"] for s in detail["steps"]] == [[OTHER_RECIPIENT]]
    assert detail["status"] == "delivered"
