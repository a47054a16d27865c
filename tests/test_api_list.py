"""GET /api/messages and /api/messages/counts: filters, order, labels, keyset paging."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo

from tests.api_support import insert_message, read_api

DAY = "from=2026-03-08&to=2026-03-08"
NOON = datetime(2026, 3, 8, 11, 0, tzinfo=UTC)  # 12:00 in Paris


@pytest.fixture
def api(app_config: dict[str, str]) -> Iterator[FlaskClient]:
    with read_api(app_config) as client:
        yield client


def subjects(api: FlaskClient, query: str) -> list[str]:
    response = api.get(f"/api/messages?{DAY}&{query}")
    assert response.status_code == 200, response.json
    return [item["subject"] for item in response.json["items"]]


# --- what an item says ----------------------------------------------------------------------


def test_an_item_carries_the_projection_row_with_a_label_and_utc_times(
    app_config: dict[str, str], db: psycopg.Connection
) -> None:
    row = insert_message(
        db,
        NOON,
        message_id="abc.123@smtp-relay.mailin.fr",
        recipient="marie@example.fr",
        sender="devis@atelier.example",
        subject="Votre devis",
        tags=["devis", "relance"],
        status="opened",
        status_at=NOON + timedelta(minutes=5),
        last_event_at=NOON + timedelta(minutes=7),
        opens=2,
        proxy_opens=1,
        clicks=0,
    )
    # The database session's zone must not leak into the answer: times are always UTC.
    url = make_conninfo(app_config["DISTRIBMAIL_DATABASE_URL"], options="-c TimeZone=Asia/Tokyo")
    with read_api(app_config, DISTRIBMAIL_DATABASE_URL=url) as api:
        (item,) = api.get(f"/api/messages?{DAY}").json["items"]

    assert item == {
        "id": row["id"],
        "provider": "brevo",
        "message_id": "abc.123@smtp-relay.mailin.fr",
        "recipient": "marie@example.fr",
        "sender": "devis@atelier.example",
        "subject": "Votre devis",
        "tags": ["devis", "relance"],
        "sent_at": "2026-03-08T11:00:00+00:00",
        "status": "opened",
        "status_label": "Ouvert",
        "status_at": "2026-03-08T11:05:00+00:00",
        "last_event_at": "2026-03-08T11:07:00+00:00",
        "opens": 2,
        "proxy_opens": 1,
        "clicks": 0,
    }


@pytest.mark.parametrize(
    ("lang", "label"),
    [
        pytest.param("", "Rebond définitif", id="default-fr"),
        pytest.param("lang=fr", "Rebond définitif", id="fr"),
        pytest.param("lang=en", "Hard bounce", id="en"),
    ],
)
def test_labels_follow_lang(
    api: FlaskClient, db: psycopg.Connection, lang: str, label: str
) -> None:
    insert_message(db, NOON, status="hard_bounced")
    (item,) = api.get(f"/api/messages?{DAY}&{lang}").json["items"]
    assert item["status_label"] == label


def test_a_message_known_only_by_unknown_events_has_no_status(
    api: FlaskClient, db: psycopg.Connection
) -> None:
    insert_message(db, NOON, status=None, status_at=None, last_event_at=None)
    (item,) = api.get(f"/api/messages?{DAY}").json["items"]
    assert (item["status"], item["status_label"], item["status_at"]) == (None, None, None)


def test_newest_first_and_id_breaks_ties(api: FlaskClient, db: psycopg.Connection) -> None:
    insert_message(db, NOON, subject="noon a")
    insert_message(db, NOON + timedelta(hours=1), subject="one")
    insert_message(db, NOON, subject="noon b")
    insert_message(db, NOON - timedelta(hours=1), subject="eleven")

    items = api.get(f"/api/messages?{DAY}").json["items"]

    noon = sorted((i["id"], i["subject"]) for i in items if i["subject"].startswith("noon"))
    assert [i["subject"] for i in items] == ["one", noon[1][1], noon[0][1], "eleven"]


# --- filters --------------------------------------------------------------------------------


@pytest.fixture
def mailbox(db: psycopg.Connection) -> None:
    """A day of mails that each filter below tells apart."""
    rows: list[dict[str, Any]] = [
        {"subject": "Devis 50% remise", "recipient": "anne@client.fr", "status": "delivered",
         "tags": ["devis"]},
        {"subject": "Devis 50 remise", "recipient": "bob@client.fr", "status": "opened",
         "tags": ["devis", "relance"]},
        {"subject": "Facture_mars", "recipient": "carla@autre.com", "status": "hard_bounced",
         "sender": "Compta@Atelier.example", "tags": ["facture"]},
        {"subject": "Facture mars", "recipient": "dan@autre.com", "status": "deferred",
         "message_id": "202603081200.42@smtp-relay.mailin.fr"},
        {"subject": "Rappel", "recipient": "eve@client.fr", "status": "clicked",
         "sender": "rappel@devis-express.example"},
    ]  # fmt: skip
    for minute, values in enumerate(rows):
        insert_message(db, NOON + timedelta(minutes=minute), **values)


EVERY_MAIL = {"Devis 50% remise", "Devis 50 remise", "Facture_mars", "Facture mars", "Rappel"}

FILTERS = [
    pytest.param("status=opened", {"Devis 50 remise"}, id="status"),
    pytest.param(
        "status=opened&status=hard_bounced",
        {"Devis 50 remise", "Facture_mars"},
        id="status-repeated",
    ),
    pytest.param("status=sent", set(), id="status-none-such"),
    pytest.param(
        "q=DEVIS",
        {"Devis 50% remise", "Devis 50 remise", "Rappel"},
        id="q-subject-or-sender-any-case",
    ),
    pytest.param("q=autre.COM", {"Facture_mars", "Facture mars"}, id="q-recipient"),
    pytest.param("q=compta@", {"Facture_mars"}, id="q-sender"),
    pytest.param("q=50%25", {"Devis 50% remise"}, id="q-percent-is-literal"),
    pytest.param("q=Facture_", {"Facture_mars"}, id="q-underscore-is-literal"),
    pytest.param("q=", EVERY_MAIL, id="q-empty-is-absent"),
    pytest.param("q=%20%20", EVERY_MAIL, id="q-blank-is-absent"),
    pytest.param("recipient=Anne@Client.FR", {"Devis 50% remise"}, id="recipient-any-case"),
    pytest.param("recipient=anne", set(), id="recipient-is-exact"),
    pytest.param("sender=compta@atelier.example", {"Facture_mars"}, id="sender-any-case"),
    pytest.param(
        "message_id=<202603081200.42@smtp-relay.mailin.fr>",
        {"Facture mars"},
        id="message-id-with-brackets",
    ),
    pytest.param(
        "message_id=202603081200.42@smtp-relay.mailin.fr", {"Facture mars"}, id="message-id-bare"
    ),
    pytest.param("tag=devis", {"Devis 50% remise", "Devis 50 remise"}, id="tag"),
    pytest.param("tag=relance", {"Devis 50 remise"}, id="tag-second-of-two"),
    pytest.param("tag=dev", set(), id="tag-is-exact"),
    pytest.param("q=devis&status=delivered&tag=devis", {"Devis 50% remise"}, id="combined"),
]


@pytest.mark.usefixtures("mailbox")
@pytest.mark.parametrize(("query", "expected"), FILTERS)
def test_filters(api: FlaskClient, query: str, expected: set[str]) -> None:
    assert set(subjects(api, query)) == expected


@pytest.mark.usefixtures("mailbox")
@pytest.mark.parametrize(("query", "expected"), FILTERS)
def test_counts_take_the_same_filters(api: FlaskClient, query: str, expected: set[str]) -> None:
    counts = api.get(f"/api/messages/counts?{DAY}&{query}").json
    assert counts["total"] == len(expected)


# --- counts ---------------------------------------------------------------------------------


def test_counts_per_status_for_the_period(api: FlaskClient, db: psycopg.Connection) -> None:
    for status in ("delivered", "delivered", "opened", None):
        insert_message(db, NOON, status=status)
    insert_message(db, NOON + timedelta(days=1), status="delivered")  # another day

    counts = api.get(f"/api/messages/counts?{DAY}").json

    assert counts["total"] == 4
    assert counts["no_status"] == 1
    assert counts["counts"]["delivered"] == 2
    assert counts["counts"]["opened"] == 1
    assert sum(counts["counts"].values()) == 3
    assert len(counts["counts"]) == 14  # every status, zeros included
    assert counts["timezone"] == "Europe/Paris"


# --- paging ---------------------------------------------------------------------------------


def walk(api: FlaskClient, query: str, limit: int) -> list[list[str]]:
    """Every page of the list, following next_cursor, as lists of ids."""
    pages: list[list[str]] = []
    cursor = ""
    while True:
        body = api.get(f"/api/messages?{DAY}&{query}&limit={limit}{cursor}").json
        pages.append([item["id"] for item in body["items"]])
        if body["next_cursor"] is None:
            return pages
        cursor = f"&cursor={body['next_cursor']}"


def test_pages_cover_the_day_once_even_across_equal_times(
    api: FlaskClient, db: psycopg.Connection
) -> None:
    # Runs of mails sent in the same microsecond straddle the page boundaries.
    rows = [insert_message(db, NOON + timedelta(seconds=i // 4)) for i in range(23)]
    newest_first = sorted(rows, key=lambda r: (r["sent_at"], r["id"]), reverse=True)

    pages = walk(api, "", limit=5)

    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert [key for page in pages for key in page] == [r["id"] for r in newest_first]


def test_an_exact_last_page_has_no_next_cursor(api: FlaskClient, db: psycopg.Connection) -> None:
    for i in range(4):
        insert_message(db, NOON + timedelta(minutes=i))
    assert [len(page) for page in walk(api, "", limit=2)] == [2, 2]


def test_paging_keeps_the_filters(api: FlaskClient, db: psycopg.Connection) -> None:
    for i in range(9):
        insert_message(db, NOON + timedelta(minutes=i), status=("opened", "delivered")[i % 2])
    pages = walk(api, "status=opened", limit=2)
    assert sum(len(page) for page in pages) == 5


def test_paging_while_mail_arrives_never_repeats_nor_skips(
    api: FlaskClient, db: psycopg.Connection
) -> None:
    existing = [insert_message(db, NOON + timedelta(minutes=i))["id"] for i in range(20)]
    newer: list[str] = []
    older: list[str] = []

    seen: list[str] = []
    cursor = ""
    for round_ in range(100):
        body = api.get(f"/api/messages?{DAY}&limit=3{cursor}").json
        seen.extend(item["id"] for item in body["items"])
        if body["next_cursor"] is None:
            break
        cursor = f"&cursor={body['next_cursor']}"
        # Between two fetches: one mail newer than everything, one older, in the same
        # day, one of them sharing its sent_at with the page's last row.
        newer.append(insert_message(db, NOON + timedelta(hours=2, minutes=round_))["id"])
        older.append(insert_message(db, NOON - timedelta(hours=2, minutes=round_))["id"])
        insert_message(db, NOON + timedelta(minutes=19 - 3 * round_ - 2))

    assert len(seen) == len(set(seen)), "a row was repeated"
    assert set(existing) <= set(seen), "a row that existed was skipped"
    assert not set(newer) & set(seen), "rows newer than the first page belong to a refresh"
    assert set(older) <= set(seen), "rows older than the cursor are still ahead"
