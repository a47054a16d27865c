"""The read API keeps its own contract: /api/openapi.json is a valid OpenAPI document, and
every answer (successes and errors alike) validates against it with openapi-core."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_spec_validator import validate as validate_spec

from ingest.database import open_pool
from ingest.providers import brevo
from ingest.recorder import insert_events
from query.projection import message_key_id
from query.projector import drain
from tests.api_support import insert_message, read_api

NOON = datetime(2026, 3, 8, 11, 0, tzinfo=UTC)


@pytest.fixture
def api(app_config: dict[str, str]) -> Iterator[FlaskClient]:
    with read_api(app_config) as client:
        yield client


@pytest.fixture
def contract(api: FlaskClient) -> OpenAPI:
    response = api.get("/api/openapi.json", headers={"Authorization": ""})
    assert response.status_code == 200
    return OpenAPI.from_dict(response.json)


@pytest.fixture
def filled(database_url: str, db: psycopg.Connection) -> str:
    """Rows of every kind: a folded message with steps (and an unknown event), projection
    rows with and without a status. Returns the folded message's id."""
    for minute in range(3):
        insert_message(db, NOON + timedelta(minutes=minute), tags=["devis"])
    insert_message(db, NOON, status=None, status_at=None, last_event_at=None, sender=None)
    base = {"email": "a@example.fr", "message-id": "<m1@relay>", "subject": "Devis"}
    ms = int(NOON.timestamp() * 1000)
    payloads = [
        {**base, "event": "request", "ts_epoch": ms},
        {**base, "event": "delivered", "ts_epoch": ms + 1500},
        {**base, "event": "click", "ts_epoch": ms + 9000, "link": "https://x.example"},
        {**base, "event": "mystery", "ts_epoch": ms + 9500},
    ]
    pool = open_pool(database_url, size=1, name="test-ingest")
    try:
        pool.wait()
        insert_events(pool, [brevo.normalize(p) for p in payloads])
    finally:
        pool.close()
    drain(db)
    return message_key_id("brevo", "m1@relay", "a@example.fr")


def test_the_document_is_valid_openapi(contract: OpenAPI, api: FlaskClient) -> None:
    document: dict[str, Any] = api.get("/api/openapi.json").json
    validate_spec(document)
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/api/messages",
        "/api/messages/counts",
        "/api/messages/{id}",
        "/api/statuses",
        "/api/openapi.json",
    }


def test_the_list_parameters_come_from_the_schema(api: FlaskClient) -> None:
    document = api.get("/api/openapi.json").json
    parameters = {p["name"]: p for p in document["paths"]["/api/messages"]["get"]["parameters"]}
    assert set(parameters) == {
        "from", "to", "status", "q", "recipient", "sender", "message_id", "tag", "lang",
        "limit", "cursor",
    }  # fmt: skip
    assert parameters["limit"]["schema"]["maximum"] == 1000
    assert "delivered" in parameters["status"]["schema"]["items"]["enum"]


def check(contract: OpenAPI, api: FlaskClient, url: str, status: int, **kwargs: Any) -> Any:
    response = api.get(url, **kwargs)
    assert response.status_code == status, response.json
    contract.validate_response(
        WerkzeugOpenAPIRequest(response.request), WerkzeugOpenAPIResponse(response)
    )
    return response.json


@pytest.mark.usefixtures("filled")
@pytest.mark.parametrize(
    "query",
    [
        pytest.param("from=2026-03-08", id="one-day"),
        pytest.param("from=2026-03-08&limit=2&lang=en", id="first-page-en"),
        pytest.param("from=2026-03-08&status=delivered&status=clicked&q=devis", id="filters"),
        pytest.param("from=2026-03-01&to=2026-03-31&tag=devis", id="a-month"),
        pytest.param("from=2027-01-01", id="empty"),
    ],
)
def test_list_answers_follow_the_contract(contract: OpenAPI, api: FlaskClient, query: str) -> None:
    body = check(contract, api, f"/api/messages?{query}", 200)
    if body["next_cursor"]:
        check(contract, api, f"/api/messages?{query}&cursor={body['next_cursor']}", 200)
    check(contract, api, f"/api/messages/counts?{query}", 200)


def test_every_time_is_utc_with_its_offset(
    contract: OpenAPI, api: FlaskClient, filled: str
) -> None:
    detail = check(contract, api, f"/api/messages/{filled}", 200)
    times = [detail["sent_at"], detail["status_at"], detail["last_event_at"]]
    times += [step["at"] for step in detail["steps"]]
    assert times and all(t.endswith("+00:00") for t in times)
    assert any(step["status"] is None for step in detail["steps"])


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_the_detail_follows_the_contract(
    contract: OpenAPI, api: FlaskClient, filled: str, lang: str
) -> None:
    check(contract, api, f"/api/messages/{filled}?lang={lang}", 200)


@pytest.mark.parametrize(
    ("url", "status", "headers"),
    [
        pytest.param("/api/messages?from=2026-02-30", 400, None, id="400-list"),
        pytest.param("/api/messages/counts?status=read", 400, None, id="400-counts"),
        pytest.param("/api/messages/0123456789abcdef01234567", 404, None, id="404"),
        pytest.param("/api/messages", 401, {"Authorization": "Bearer nope"}, id="401"),
        pytest.param("/api/statuses", 401, {"Authorization": ""}, id="401-statuses"),
    ],
)
def test_errors_follow_the_contract(
    contract: OpenAPI, api: FlaskClient, url: str, status: int, headers: dict[str, str] | None
) -> None:
    body = check(contract, api, url, status, headers=headers)
    assert body["error"]


def test_statuses_carry_the_vocabulary(contract: OpenAPI, api: FlaskClient) -> None:
    items = check(contract, api, "/api/statuses", 200)["items"]
    by_code = {item["code"]: item for item in items}
    assert len(by_code) == 14
    assert by_code["proxy_opened"]["labels"] == {"fr": "Chargé par proxy", "en": "Loaded by proxy"}
    assert by_code["hard_bounced"]["kind"] == "failure"
    assert by_code["complained"]["precedence"] > by_code["clicked"]["precedence"]
    assert by_code["delivered"]["explanations"]["fr"].startswith("Le serveur mail")
