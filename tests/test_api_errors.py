"""What the read API refuses: bad parameters (400, naming them), unknown ids (404), and
callers without an API token (401 with WWW-Authenticate)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.conninfo import conninfo_to_dict

from tests.api_support import API_TOKENS, read_api, scratch_database
from tests.conftest import TEST_TOKENS


@pytest.fixture(scope="module")
def shared_config(
    server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Nothing here writes: one database and one app serve the whole module."""
    with scratch_database(server_url, template_database) as url:
        data_dir = str(tmp_path_factory.mktemp("data"))
        yield {"DISTRIBMAIL_DATABASE_URL": url, "DISTRIBMAIL_DATA_DIR": data_dir}


@pytest.fixture(scope="module")
def api(shared_config: dict[str, str]) -> Iterator[FlaskClient]:
    with read_api(shared_config) as client:
        yield client


def cursor(document: object) -> str:
    """A cursor built by hand, the way ours are encoded (urlsafe base64 of JSON)."""
    raw = json.dumps(document).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


GOOD_ID = "0123456789abcdef01234567"
GOOD_TIME = "2026-03-08T11:00:00+00:00"

# (query string, the parameter the answer must name)
BAD_FILTERS = [
    pytest.param("from=2026-02-30", "from", id="from-not-a-calendar-day"),
    pytest.param("from=08/03/2026", "from", id="from-french-format"),
    pytest.param("from=20260308", "from", id="from-basic-iso"),
    pytest.param("from=2026-03-08T10:00", "from", id="from-with-time"),
    pytest.param("to=yesterday", "to", id="to-not-a-date"),
    pytest.param("from=2026-03-08&to=2026-03-07", "to", id="to-before-from"),
    pytest.param("from=2025-01-01&to=2026-01-02", "to", id="range-367-days"),
    pytest.param("status=delivred", "status", id="status-unknown"),
    pytest.param("status=delivered&status=read", "status", id="status-second-unknown"),
    pytest.param("status=Delivered", "status", id="status-case"),
    pytest.param("lang=de", "lang", id="lang-unknown"),
    pytest.param("message_id=%3C%3E", "message_id", id="message-id-only-brackets"),
]

BAD_PAGING = [
    pytest.param("limit=0", "limit", id="limit-zero"),
    pytest.param("limit=1001", "limit", id="limit-over-max"),
    pytest.param("limit=-5", "limit", id="limit-negative"),
    pytest.param("limit=ten", "limit", id="limit-not-a-number"),
    pytest.param("limit=2.5", "limit", id="limit-not-whole"),
    pytest.param("cursor=not-a-cursor", "cursor", id="cursor-garbage"),
    pytest.param("cursor=" + cursor({"after": 1}), "cursor", id="cursor-other-json"),
    pytest.param("cursor=" + cursor([2, GOOD_TIME, GOOD_ID]), "cursor", id="cursor-version"),
    pytest.param("cursor=" + cursor([1, "2026-03-08T11:00", GOOD_ID]), "cursor", id="cursor-naive"),
    pytest.param("cursor=" + cursor([1, "noon", GOOD_ID]), "cursor", id="cursor-bad-time"),
    pytest.param("cursor=" + cursor([1, GOOD_TIME, "x' OR 1=1"]), "cursor", id="cursor-bad-id"),
    pytest.param("cursor=" + cursor([1, GOOD_TIME]), "cursor", id="cursor-short"),
    pytest.param("cursor=" + cursor([1, GOOD_TIME, GOOD_ID])[:-3], "cursor", id="cursor-cut"),
    pytest.param("cursor=" + "A" * 300, "cursor", id="cursor-too-long"),
]


def assert_names(response: object, parameter: str) -> None:
    assert response.status_code == 400  # type: ignore[attr-defined]
    body = response.json  # type: ignore[attr-defined]
    assert body["parameter"] == parameter
    assert f"'{parameter}'" in body["error"]


@pytest.mark.parametrize(("query", "parameter"), BAD_FILTERS + BAD_PAGING)
def test_the_list_names_the_bad_parameter(api: FlaskClient, query: str, parameter: str) -> None:
    assert_names(api.get(f"/api/messages?{query}"), parameter)


@pytest.mark.parametrize(("query", "parameter"), BAD_FILTERS)
def test_the_counts_name_the_bad_parameter(api: FlaskClient, query: str, parameter: str) -> None:
    assert_names(api.get(f"/api/messages/counts?{query}"), parameter)


def test_the_detail_names_a_bad_lang(api: FlaskClient) -> None:
    assert_names(api.get(f"/api/messages/{GOOD_ID}?lang=es"), "lang")


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("from=2025-01-01&to=2026-01-01", id="range-366-days"),
        pytest.param("from=2024-01-01&to=2024-12-31", id="leap-year"),
        pytest.param("limit=1", id="limit-min"),
        pytest.param("limit=1000", id="limit-max"),
        pytest.param("limit=%2010", id="limit-with-blank"),
        pytest.param("cursor=" + cursor([1, GOOD_TIME, GOOD_ID]), id="cursor-well-formed"),
        pytest.param("unknown=1&_=1712345", id="unknown-parameters-ignored"),
    ],
)
def test_edges_that_are_accepted(api: FlaskClient, query: str) -> None:
    response = api.get(f"/api/messages?{query}")
    assert response.status_code == 200, response.json


# --- 404 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(GOOD_ID, id="well-formed-unknown"),
        pytest.param("nope", id="not-an-id"),
        pytest.param("0123456789ABCDEF01234567", id="upper-case"),
    ],
)
def test_an_unknown_message_is_404(api: FlaskClient, key: str) -> None:
    response = api.get(f"/api/messages/{key}")
    assert response.status_code == 404
    assert key in response.json["error"]


def test_an_unknown_api_path_is_a_json_404(api: FlaskClient) -> None:
    response = api.get("/api/nothing-here")
    assert response.status_code == 404
    assert "error" in response.json


# --- 401 ------------------------------------------------------------------------------------

ROUTES = [
    "/api/messages",
    "/api/messages/counts",
    f"/api/messages/{GOOD_ID}",
    "/api/statuses",
]

REFUSED = [
    pytest.param(None, id="no-header"),
    pytest.param("", id="empty-header"),
    pytest.param("Bearer", id="bearer-without-token"),
    pytest.param("Bearer wrong-token", id="wrong-token"),
    pytest.param(f"Bearer {API_TOKENS[0]}x", id="token-with-extra"),
    pytest.param(f"Bearer {API_TOKENS[0][:-1]}", id="token-prefix"),
    pytest.param(f"Bearer {TEST_TOKENS[0]}", id="webhook-token"),
    pytest.param(f"Token {API_TOKENS[0]}", id="other-scheme"),
    pytest.param("Basic " + base64.b64encode(f"api:{API_TOKENS[0]}".encode()).decode(), id="basic"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("authorization", REFUSED)
def test_no_api_token_is_401_with_a_challenge(
    api_app_client: FlaskClient, route: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = api_app_client.get(route, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert "DISTRIBMAIL_API_TOKENS" in response.json["error"]


@pytest.mark.parametrize("token", API_TOKENS, ids=["current", "next"])
def test_every_configured_token_opens_the_api(api_app_client: FlaskClient, token: str) -> None:
    response = api_app_client.get("/api/statuses", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200


def test_no_configured_token_opens_nothing(shared_config: dict[str, str]) -> None:
    with read_api(shared_config, DISTRIBMAIL_API_TOKENS="") as api:
        response = api.get("/api/statuses")
    assert response.status_code == 401


def test_the_openapi_document_needs_no_token(api_app_client: FlaskClient) -> None:
    assert api_app_client.get("/api/openapi.json").status_code == 200


def test_in_the_whole_app_the_webhook_token_does_not_open_the_api(make_app) -> None:  # type: ignore[no-untyped-def]
    app: Flask = make_app(DISTRIBMAIL_API_TOKENS=",".join(API_TOKENS))
    if "api.list_messages" not in app.view_functions:
        pytest.skip("distribmail/app.py does not mount the read API (query.api.mount_api) yet")
    client = app.test_client()
    webhook = {"Authorization": f"Bearer {TEST_TOKENS[0]}"}
    assert client.get("/api/messages", headers=webhook).status_code == 401
    api = {"Authorization": f"Bearer {API_TOKENS[0]}"}
    assert client.get("/api/messages", headers=api).status_code == 200
    assert client.post("/webhooks/brevo", headers=api, json={}).status_code == 401


@pytest.fixture(scope="module")
def api_app_client(shared_config: dict[str, str]) -> Iterator[FlaskClient]:
    """A client that sends no token unless told to."""
    with read_api(shared_config) as client:
        client.environ_base.pop("HTTP_AUTHORIZATION")
        yield client


def test_a_database_that_went_away_is_a_json_503(
    server_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with scratch_database(server_url, template_database) as url:
        config = {
            "DISTRIBMAIL_DATABASE_URL": url,
            "DISTRIBMAIL_DATA_DIR": str(tmp_path_factory.mktemp("data")),
            "DISTRIBMAIL_DB_TIMEOUT": "1",
        }
        with read_api(config) as api:
            assert api.get("/api/messages").status_code == 200
            with psycopg.connect(server_url, autocommit=True) as conn:
                name = conninfo_to_dict(url)["dbname"]
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # type: ignore[arg-type]
            response = api.get("/api/messages")
    assert response.status_code == 503
    assert "database" in response.json["error"]
