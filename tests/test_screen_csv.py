"""The CSV export: what Excel in French opens well, the same filters as the list, every
row (all pages), and no formula smuggled in by a subject."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from flask.testing import FlaskClient

from query.screen_csv import cell
from tests.screen_support import (
    DAY,
    DAY_MAILS,
    Mail,
    at,
    build_screen_app,
    fold_now,
    many_mails,
    post_mails,
    sign_in,
)

DAY_QUERY = f"from={DAY}&to={DAY}"


@pytest.fixture
def day(
    make_app: Any, app_config: dict[str, str], auth_headers: dict[str, str], database_url: str
) -> FlaskClient:
    client = build_screen_app(make_app, app_config).test_client()
    post_mails(client, auth_headers, DAY_MAILS)
    fold_now(database_url)
    sign_in(client)
    return client


def read_csv(client: FlaskClient, query: str) -> tuple[bytes, list[list[str]]]:
    response = client.get(f"/export.csv?{query}")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    body = response.get_data()
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig")), delimiter=";"))
    return body, rows


def test_the_csv_opens_well_in_french_excel(day: FlaskClient) -> None:
    response = day.get(f"/export.csv?{DAY_QUERY}")
    body, rows = read_csv(day, DAY_QUERY)

    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 byte order mark
    assert b"\r\n" in body
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="distribmail-2026-03-08.csv"'
    )
    assert rows[0] == ["Envoi", "Expéditeur", "Destinataire", "Libellé", "Statut", "Code statut"]
    assert rows[1] == [
        "08/03/26 12:30",
        "gestan@atelier-martin.fr",
        "l.garnier@example.fr",
        "Gestan - Actions à faire",
        "Requête",
        "requested",
    ]
    assert len(rows) == 1 + len(DAY_MAILS)


def test_the_csv_follows_the_list_filters_and_language(day: FlaskClient) -> None:
    _, rows = read_csv(day, f"{DAY_QUERY}&status=hard_bounced&status=deferred&lang=en")

    assert rows[0] == ["Sent", "Sender", "Recipient", "Subject", "Status", "Status code"]
    assert [(row[2], row[4], row[5]) for row in rows[1:]] == [
        ("p.moreau@example.org", "Deferred", "deferred"),
        ("inconnu@domaine-inexistant.xyz", "Hard bounce", "hard_bounced"),
    ]
    _, searched = read_csv(day, f"{DAY_QUERY}&q=bernard")
    assert [row[2] for row in searched[1:]] == ["j.bernard@example.com"]


def test_the_csv_holds_every_row_of_every_page(
    day: FlaskClient, auth_headers: dict[str, str], database_url: str
) -> None:
    post_mails(day, auth_headers, many_mails(1150, day=9))
    fold_now(database_url)

    _, rows = read_csv(day, "from=2026-03-08&to=2026-03-09")

    assert len(rows) == 1 + 1150 + len(DAY_MAILS)
    recipients = [row[2] for row in rows[1:]]
    assert len(set(recipients)) == len(recipients)
    assert [row[0] for row in rows[1:]] == sorted(
        (row[0] for row in rows[1:]), key=lambda s: (s[6:8], s[3:5], s[0:2], s[9:]), reverse=True
    )


def test_a_formula_in_a_subject_stays_text(
    day: FlaskClient, auth_headers: dict[str, str], database_url: str
) -> None:
    formula = '=HYPERLINK("https://evil.example","Cliquez")'
    post_mails(
        day,
        auth_headers,
        (Mail("f1@smtp-relay.mailin.fr", "x@example.com", formula, "+33@example.com",
              (("request", at(13, 0), {}),)),),
    )  # fmt: skip
    fold_now(database_url)

    _, rows = read_csv(day, f"{DAY_QUERY}&q=HYPERLINK")

    assert rows[1][1] == "'+33@example.com"
    assert rows[1][3] == "'" + formula


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Devis", "Devis"), ("=1+1", "'=1+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"),
     ("", ""), (None, "")],
    ids=["plain", "equals", "minus", "at", "empty", "none"],
)  # fmt: skip
def test_cell(value: str | None, expected: str) -> None:
    assert cell(value) == expected


def test_the_csv_needs_a_session(make_app: Any, app_config: dict[str, str]) -> None:
    client = build_screen_app(make_app, app_config).test_client()

    assert client.get(f"/export.csv?{DAY_QUERY}").status_code == 302
