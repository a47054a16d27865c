"""The screen's pages through Flask's test client: sign-in, the list and its filters,
paging, the timeline, the language switch, escaping. The events are real: posted through
the webhook and folded by the projector (tests/screen_support.py)."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.conninfo import conninfo_to_dict
from werkzeug.test import TestResponse

from ingest.web import CLOSERS, register_error_handlers
from query.api import POOL as API_POOL
from query.screen import mount_screen
from tests.conftest import _with_database
from tests.screen_support import (
    DAY,
    DAY_MAILS,
    PASSWORD,
    XSS_SUBJECT,
    build_screen_app,
    fold_now,
    many_mails,
    post_mails,
    sign_in,
)

DAY_QUERY = f"from={DAY}&to={DAY}"


@pytest.fixture
def screen_app(make_app: Any, app_config: dict[str, str]) -> Flask:
    return build_screen_app(make_app, app_config)


@pytest.fixture
def screen(screen_app: Flask) -> FlaskClient:
    return screen_app.test_client()


@pytest.fixture
def day(screen: FlaskClient, auth_headers: dict[str, str], database_url: str) -> FlaskClient:
    """A signed-in client, and the seed-like day in the database."""
    post_mails(screen, auth_headers, DAY_MAILS)
    assert fold_now(database_url) == len(DAY_MAILS)
    sign_in(screen)
    return screen


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr tabindex="0" data-id="([0-9a-f]{24})"', html)


def json_of(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.get_json()
    return document


def cells(html: str, css_class: str) -> list[str]:
    """The text of every `<td class=css_class>` (tags stripped, entities decoded)."""
    found = re.findall(rf'<td class="{css_class}"[^>]*>(.*?)</td>', html, re.S)
    return [unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in found]


# --- sign-in ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", f"/?{DAY_QUERY}", "/export.csv", "/messages/0123456789abcdef01234567"],
    ids=["list", "list-with-period", "csv", "detail"],
)
def test_every_page_asks_to_sign_in_first(screen: FlaskClient, path: str) -> None:
    response = screen.get(path)

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_the_rows_endpoint_answers_401_json_when_signed_out(screen: FlaskClient) -> None:
    response = screen.get(f"/rows?{DAY_QUERY}")

    assert response.status_code == 401
    assert response.is_json


def test_static_files_and_the_login_page_are_public(screen: FlaskClient) -> None:
    assert screen.get("/login").status_code == 200
    assert screen.get("/static/screen/screen.css").status_code == 200
    assert screen.get("/static/screen/screen.js").status_code == 200


def test_signing_in_with_the_ui_password_keeps_a_strict_httponly_session(
    screen: FlaskClient,
) -> None:
    response = screen.post("/login", data={"password": PASSWORD, "next": f"/?{DAY_QUERY}"})

    assert response.status_code == 302
    assert response.headers["Location"] == f"/?{DAY_QUERY}"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert screen.get("/").status_code == 200


def test_an_api_token_is_a_password_too(screen: FlaskClient) -> None:
    sign_in(screen, "api-token-for-screen")

    assert screen.get("/").status_code == 200


@pytest.mark.parametrize(
    "password", ["wrong", "", PASSWORD + " ", PASSWORD[:-1]], ids=["wrong", "empty", "+space", "-1"]
)
def test_a_wrong_password_is_refused(screen: FlaskClient, password: str) -> None:
    response = screen.post("/login", data={"password": password})

    assert response.status_code == 401
    assert "Mot de passe incorrect." in response.text
    assert screen.get("/").status_code == 302


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"],
    ids=["absolute", "scheme-relative", "backslash", "javascript"],
)
def test_after_sign_in_only_a_local_path_is_followed(screen: FlaskClient, target: str) -> None:
    response = screen.post("/login", data={"password": PASSWORD, "next": target})

    assert response.headers["Location"] == "/"


def test_logout_ends_the_session(screen: FlaskClient) -> None:
    sign_in(screen)

    response = screen.post("/logout")

    assert response.status_code == 302
    assert screen.get("/").status_code == 302


def test_changing_the_password_signs_open_sessions_out(
    make_app: Any, app_config: dict[str, str]
) -> None:
    first = build_screen_app(make_app, app_config).test_client()
    sign_in(first)
    cookie = first.get_cookie("distribmail_session")
    assert cookie is not None
    changed = build_screen_app(make_app, app_config, DISTRIBMAIL_UI_PASSWORD="a new one")
    second = changed.test_client()
    second.set_cookie("distribmail_session", cookie.value)

    assert second.get("/").status_code == 302


def test_without_any_password_the_login_page_says_what_to_set(
    make_app: Any, app_config: dict[str, str]
) -> None:
    app = build_screen_app(
        make_app, app_config, DISTRIBMAIL_UI_PASSWORD="", DISTRIBMAIL_API_TOKENS=""
    )
    client = app.test_client()

    page = client.get("/login").text
    assert "DISTRIBMAIL_UI_PASSWORD" in page
    assert 'type="password"' not in page
    assert client.post("/login", data={"password": ""}).status_code == 200
    assert client.get("/").status_code == 302


def test_the_secret_key_is_generated_once_with_mode_0600(
    make_app: Any, app_config: dict[str, str], tmp_path: Any
) -> None:
    app = build_screen_app(make_app, app_config, DISTRIBMAIL_SECRET_KEY="")
    key_file = tmp_path / "data" / "secret-key"

    assert key_file.stat().st_mode & 0o777 == 0o600
    assert app.secret_key == key_file.read_bytes().strip()
    again = build_screen_app(make_app, app_config, DISTRIBMAIL_SECRET_KEY="")
    assert again.secret_key == app.secret_key


# --- the list -----------------------------------------------------------------------------


def test_the_list_shows_the_day_newest_first_in_paris_time(day: FlaskClient) -> None:
    page = day.get(f"/?{DAY_QUERY}").text

    sent = cells(page, "sent")
    assert sent[0] == "08/03/26 12:30"  # 11:30 UTC, the last mail of the day
    assert sent[-1] == "08/03/26 08:02"  # 07:02 UTC, the first
    assert sent == sorted(sent, reverse=True)
    assert len(row_ids(page)) == len(DAY_MAILS)
    for column in ("Envoi", "Expéditeur", "Destinataire", "Libellé", "Statut"):
        assert f">{column}</th>" in page


def test_statuses_are_badges_coloured_by_kind_with_the_explanation_as_tooltip(
    day: FlaskClient,
) -> None:
    page = day.get(f"/?{DAY_QUERY}").text

    statuses = cells(page, "status")
    assert statuses[-1] == "Cliqué"
    assert set(statuses) == {
        "Cliqué", "Ouvert", "Délivré", "Rebond définitif", "Différé", "Chargé par proxy",
        "Requête",
    }  # fmt: skip
    assert (
        '<span class="badge kind-failure" title="L&#39;email n&#39;a pas pu être livré. Hard '
        'bounce : l&#39;adresse est invalide, par exemple user@domain.xyz" '
        'data-status="hard_bounced">Rebond définitif</span>'
    ) in page
    assert 'class="badge kind-success"' in page
    assert 'class="badge kind-engagement"' in page
    assert 'class="badge kind-temporary"' in page
    assert 'class="badge kind-pending"' in page


def test_the_counts_per_status_of_the_period_are_above_the_table(day: FlaskClient) -> None:
    page = day.get(f"/?{DAY_QUERY}&status=delivered").text

    chips = dict(
        re.findall(r'data-status="(\w+)">[^<]*</span> <span class="count">(\d+)</span>', page)
    )
    # The whole period is counted, whatever statuses are ticked, so that a chip's count
    # says what ticking it would show.
    assert chips == {
        "requested": "1", "deferred": "1", "delivered": "1", "proxy_opened": "1",
        "opened": "1", "clicked": "2", "hard_bounced": "1",
    }  # fmt: skip
    assert re.search(r'value="delivered" checked>', page)
    assert page.index('id="chips"') < page.index('id="messages"')


def test_today_is_the_default_period(day: FlaskClient) -> None:
    page = day.get("/").text

    assert row_ids(page) == []  # the day's mails are on 8 March 2026, not today
    assert "Aucun mail pour ces critères." in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=hard_bounced", ["inconnu@domaine-inexistant.xyz"]),
        ("status=deferred&status=hard_bounced",
         ["p.moreau@example.org", "inconnu@domaine-inexistant.xyz"]),
        ("q=BERNARD", ["j.bernard@example.com"]),
        ("q=demande", ["c.petit@example.net", "inconnu@domaine-inexistant.xyz",
                       "contact@boulangerie-leroy.fr"]),
        ("q=demande&status=delivered", ["contact@boulangerie-leroy.fr"]),
        ("q=nothing-like-this", []),
    ],
    ids=["one-status", "two-statuses", "search-any-case", "search-subject", "both", "no-match"],
)  # fmt: skip
def test_filters(day: FlaskClient, query: str, expected: list[str]) -> None:
    page = day.get(f"/?{DAY_QUERY}&{query}").text

    assert cells(page, "address")[1::2] == expected


def test_a_range_of_days(day: FlaskClient, auth_headers: dict[str, str], database_url: str) -> None:
    post_mails(day, auth_headers, many_mails(2, day=9))
    fold_now(database_url)

    assert len(row_ids(day.get(f"/?from={DAY}&to={DAY}").text)) == len(DAY_MAILS)
    assert len(row_ids(day.get("/?from=2026-03-09&to=2026-03-09").text)) == 2
    assert len(row_ids(day.get(f"/?from={DAY}&to=2026-03-09").text)) == len(DAY_MAILS) + 2


def test_a_bad_period_is_an_error_page_not_json(day: FlaskClient) -> None:
    response = day.get("/?from=2026-03-09&to=2026-03-08")

    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "before" in response.text


def test_paging_through_rows_never_repeats_a_row(
    day: FlaskClient, auth_headers: dict[str, str], database_url: str
) -> None:
    post_mails(day, auth_headers, many_mails(250))
    fold_now(database_url)
    total = 250 + len(DAY_MAILS)

    page = day.get(f"/?{DAY_QUERY}").text
    seen = row_ids(page)
    cursor = re.search(r'data-next="([^"]+)"', page)
    assert len(seen) == 100 and cursor is not None
    next_cursor: str | None = unescape(cursor.group(1))
    while next_cursor:
        data = json_of(day.get(f"/rows?{DAY_QUERY}&limit=100&cursor={next_cursor}"))
        seen += row_ids(data["rows"])
        next_cursor = data["next"]

    assert len(seen) == total
    assert len(set(seen)) == total


def test_the_refresh_returns_the_first_rows_and_the_counts_as_html(
    day: FlaskClient, auth_headers: dict[str, str], database_url: str
) -> None:
    before = json_of(day.get(f"/rows?{DAY_QUERY}&limit=100"))
    post_mails(day, auth_headers, many_mails(1))
    fold_now(database_url)

    after = json_of(day.get(f"/rows?{DAY_QUERY}&limit=100"))

    assert len(row_ids(after["rows"])) == len(row_ids(before["rows"])) + 1
    assert after["total"] == before["total"] + 1
    assert after["next"] is None
    assert 'class="chip' in after["chips"]


# --- the timeline ---------------------------------------------------------------------------


def detail_page(client: FlaskClient, recipient: str) -> str:
    page = client.get(f"/?{DAY_QUERY}&q={recipient}").text
    (href,) = set(re.findall(r'data-href="([^"]+)"', page))
    response = client.get(unescape(href))
    assert response.status_code == 200
    return response.text


def test_the_timeline_shows_every_step_with_its_details(day: FlaskClient) -> None:
    page = detail_page(day, "marie.dupont@example.fr")

    assert "Devis 2026-118 : rénovation cuisine" in page
    steps = re.findall(r'<li class="step kind-(\w+)">.*?<time[^>]*>([^<]+)</time>', page, re.S)
    assert steps == [
        ("pending", "08/03/26 08:02:00"),
        ("success", "08/03/26 08:02:04"),
        ("engagement", "08/03/26 08:31:00"),
        ("engagement", "08/03/26 08:33:00"),
    ]
    assert '<code class="event" title="Événement Brevo">click</code>' in page
    assert (
        '<a href="https://atelier-martin.fr/devis/2026-118" rel="noopener noreferrer" '
        'target="_blank">'
    ) in page
    assert "203.0.113.7" in page
    assert "Chrome/122.0" in page
    assert page.count('<details class="payload">') == 4
    assert "&#34;ts_epoch&#34;: " in page  # the raw payload, pretty-printed and escaped


def test_the_timeline_shows_the_reason_of_a_bounce(day: FlaskClient) -> None:
    page = detail_page(day, "inconnu@domaine-inexistant.xyz")

    assert "550 5.1.1 &lt;inconnu@domaine-inexistant.xyz&gt;: Recipient address rejected" in page


def test_the_back_link_keeps_the_list_filters(day: FlaskClient) -> None:
    page = detail_page(day, "j.bernard@example.com")

    back = re.search(r'class="back" href="([^"]+)"', page)
    assert back is not None
    assert unescape(back.group(1)) == f"/?{DAY_QUERY}&q=j.bernard@example.com".replace("@", "%40")


@pytest.mark.parametrize(
    "key",
    ["0123456789abcdef01234567", "not-a-key", "0123456789ABCDEF01234567"],
    ids=["unknown", "bad", "capitals"],
)
def test_an_unknown_mail_is_a_404_page(day: FlaskClient, key: str) -> None:
    response = day.get(f"/messages/{key}")

    assert response.status_code == 404
    assert response.mimetype == "text/html"


# --- what comes from outside is text --------------------------------------------------------


def test_a_hostile_subject_sender_link_and_user_agent_are_shown_as_text(
    day: FlaskClient,
) -> None:
    listing = day.get(f"/?{DAY_QUERY}").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in listing
    assert XSS_SUBJECT not in listing
    assert "<script>alert" not in listing

    page = detail_page(day, "test@example.com")
    assert XSS_SUBJECT not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script>" not in page and "<b>UA</b>" not in page
    assert "&lt;b&gt;UA&lt;/b&gt;&lt;script&gt;alert(4)&lt;/script&gt;" in page
    # A javascript: link is shown, never followed.
    assert 'href="javascript:' not in page
    assert '<span class="mono">javascript:alert(3)</span>' in page


def test_pages_forbid_inline_scripts(day: FlaskClient) -> None:
    response = day.get(f"/?{DAY_QUERY}")

    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script>" not in response.text  # only <script src=...>
    assert re.search(r"<[^>]+\son\w+=", response.text) is None  # no inline handler


# --- languages ----------------------------------------------------------------------------


def test_french_by_default_english_on_request_and_kept_in_the_session(
    day: FlaskClient,
) -> None:
    french = day.get(f"/?{DAY_QUERY}").text
    assert '<html lang="fr">' in french and ">Destinataire</th>" in french
    assert ">Rebond définitif</span>" in french

    english = day.get(f"/?{DAY_QUERY}&lang=en").text
    assert '<html lang="en">' in english and ">Recipient</th>" in english
    assert ">Hard bounce</span>" in english
    assert "The email could not be delivered." in english

    kept = day.get(f"/?{DAY_QUERY}").text
    assert '<html lang="en">' in kept
    assert '<html lang="fr">' in day.get(f"/?{DAY_QUERY}&lang=fr").text


def test_an_unknown_language_is_ignored(day: FlaskClient) -> None:
    response = day.get(f"/?{DAY_QUERY}&lang=de")

    assert response.status_code == 200
    assert '<html lang="fr">' in response.text


def test_the_language_survives_sign_in_and_sign_out(screen: FlaskClient) -> None:
    assert '<html lang="en">' in screen.get("/login?lang=en").text
    sign_in(screen)
    assert '<html lang="en">' in screen.get("/").text
    screen.post("/logout")
    assert "Sign in" in screen.get("/login").text


# --- the database -------------------------------------------------------------------------


def test_a_database_outage_is_a_503_page(day: FlaskClient, database_url: str) -> None:
    name = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(_with_database(database_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
        try:
            response = day.get(f"/?{DAY_QUERY}")
        finally:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    assert response.status_code == 503
    assert "La base de données ne répond pas." in response.text


def test_the_screen_runs_without_the_read_api_on_a_pool_of_its_own(
    app_config: dict[str, str],
) -> None:
    app = Flask("screen-alone")
    register_error_handlers(app)
    env = {**app_config, "DISTRIBMAIL_UI_PASSWORD": PASSWORD}
    screen = mount_screen(app, env, app_config["DISTRIBMAIL_DATABASE_URL"])
    try:
        client = app.test_client()
        sign_in(client)

        assert client.get(f"/?{DAY_QUERY}").status_code == 200
        assert API_POOL not in app.extensions
        assert screen.pool.name == "screen"
    finally:
        for close in app.extensions[CLOSERS]:
            close()
