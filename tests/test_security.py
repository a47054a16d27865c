"""Security, across every route: credentials required, kept apart, injections inert, the log
unchangeable by the service's own database role, secrets never in logs or pages."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import psycopg
import pytest
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from query.projector import drain
from query.replay import replay
from tests.api_support import insert_message
from tests.conftest import TEST_TOKENS
from tests.payloads import event
from tests.servers import Served

API_TOKEN = "api-S3cret-token-4f1c"
UI_PASSWORD = "ui-S3cret-pass-9a7e"
BASIC = ("brevo", "basic-S3cret-pw-2b8d")
SECRET_KEY = "sk-S3cret-key-6d3f0e"
DB_PASSWORD = "db-S3cret-pw-71c5"
WRONG = "wrong-S3cret-guess-0c9a"  # a mistyped real secret must not leak either
SECRETS = (*TEST_TOKENS, API_TOKEN, UI_PASSWORD, BASIC[1], SECRET_KEY, DB_PASSWORD, WRONG)


def settings(database_url: str) -> dict[str, str]:
    return {
        "DISTRIBMAIL_API_TOKENS": API_TOKEN,
        "DISTRIBMAIL_UI_PASSWORD": UI_PASSWORD,
        "DISTRIBMAIL_WEBHOOK_BASIC_AUTH": ":".join(BASIC),
        "DISTRIBMAIL_SECRET_KEY": SECRET_KEY,
        # The test server does not ask for it (trust), but the service holds it all the same.
        "DISTRIBMAIL_DATABASE_URL": make_conninfo(database_url, password=DB_PASSWORD),
    }


@pytest.fixture
def secure_app(make_app, database_url):
    return make_app(**settings(database_url))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- every route asks for its credential ------------------------------------------------

# (endpoint, method) open to anyone, and why. Everything else must refuse.
PUBLIC = {
    ("ingest.healthz", "GET"): "liveness probe",
    ("ingest.readyz", "GET"): "readiness probe",
    ("ingest.webhook", "GET"): "Brevo and admins check that the URL answers; stores nothing",
    ("static", "GET"): "static files",
    ("screen.static", "GET"): "the screen's CSS and JS",
    ("screen.login", "GET"): "the sign-in page",
    ("screen.login", "POST"): "the sign-in form (checks the password itself)",
    ("api.openapi_document", "GET"): "the API's contract: holds no data (query/api.py)",
}
ARGUMENTS = {"provider": "brevo", "key": "0" * 24, "filename": "screen.css"}


def every_route(app) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) for every rule of the app and every method it accepts."""
    adapter = app.url_map.bind("localhost")
    found = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"OPTIONS"}):
            values = {name: ARGUMENTS.get(name, "x") for name in rule.arguments}
            found.append((rule.endpoint, method, adapter.build(rule.endpoint, values)))
    return found


def is_public(endpoint: str, method: str) -> bool:
    return (endpoint, "GET" if method == "HEAD" else method) in PUBLIC


def test_every_route_but_the_public_ones_refuses_without_credentials(secure_app):
    client = secure_app.test_client()
    routes = every_route(secure_app)
    endpoints = {endpoint for endpoint, _, _ in routes}
    # The walk sees the whole composition, and the allow-list names no route that is gone.
    assert {"ingest.webhook", "api.list_messages", "screen.message_list", "metrics"} <= endpoints
    assert {e for e, _ in PUBLIC if e != "static"} <= endpoints

    open_doors = []
    for endpoint, method, url in routes:
        response = client.open(url, method=method)
        status = response.status_code
        assert status < 500, (endpoint, method, status)
        if is_public(endpoint, method):
            # The sign-in form answers a missing password with 401, as it should.
            assert status != 403 and (status != 401 or endpoint == "screen.login"), endpoint
            continue
        to_login = status == 302 and urlparse(response.location).path == "/login"
        if status not in (401, 403) and not to_login:
            open_doors.append((endpoint, method, url, status))
    print(f"\nSECURITY routes walked: {len(routes)} (endpoint, method) pairs, "
          f"{sum(is_public(e, m) for e, m, _ in routes)} public")  # fmt: skip
    assert open_doors == []


# --- each credential opens its own door only --------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/webhooks/brevo", bearer(API_TOKEN)),
        ("POST", "/webhooks/brevo", basic("brevo", API_TOKEN)),
        ("GET", "/api/messages", bearer(TEST_TOKENS[0])),
        ("GET", "/api/messages/counts", bearer(TEST_TOKENS[1])),
        ("GET", "/api/statuses", bearer(TEST_TOKENS[0])),
        ("GET", "/metrics", bearer(TEST_TOKENS[0])),
        ("GET", "/api/messages", basic(*BASIC)),
        ("GET", "/api/messages", bearer(UI_PASSWORD)),
        ("GET", "/api/messages", bearer(SECRET_KEY)),
    ],
    ids=["api-token-posts-webhook", "api-token-as-basic", "webhook-token-lists",
         "next-webhook-token-counts", "webhook-token-statuses", "webhook-token-metrics",
         "webhook-basic-lists", "ui-password-as-api-token", "secret-key-as-api-token"],
)  # fmt: skip
def test_a_credential_does_not_open_another_door(secure_app, db, method, path, headers):
    client = secure_app.test_client()
    body = json.dumps(event()) if method == "POST" else None
    response = client.open(path, method=method, headers=headers, data=body)
    assert response.status_code == 401
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


@pytest.mark.parametrize(
    "password",
    [TEST_TOKENS[0], BASIC[1], SECRET_KEY, ""],
    ids=["webhook-token", "basic-password", "secret-key", "empty"],
)
def test_the_screen_takes_no_webhook_secret(secure_app, password):
    client = secure_app.test_client()
    assert client.post("/login", data={"password": password}).status_code == 401
    assert client.get("/").status_code == 302


def test_each_credential_opens_its_own_door(secure_app):
    client = secure_app.test_client()
    webhook = client.post("/webhooks/brevo", json=event(), headers=bearer(TEST_TOKENS[0]))
    assert webhook.status_code == 200
    assert client.post("/webhooks/brevo", json=event(), headers=basic(*BASIC)).status_code == 200
    assert client.get("/api/messages", headers=bearer(API_TOKEN)).status_code == 200
    assert client.get("/metrics", headers=bearer(API_TOKEN)).status_code == 200
    assert client.post("/login", data={"password": UI_PASSWORD}).status_code == 302
    assert client.get("/").status_code == 200


# --- injections in every filter ---------------------------------------------------------

INJECTIONS = [
    "'", "''", "\"", "' OR '1'='1", "' OR 1=1 --", "1; DROP TABLE events; --",
    "'; DELETE FROM messages; --", "%", "_", "%%", "%_%", "a%' OR '%'='",
    "' UNION SELECT id, provider, message_id FROM messages --", "\\", "\\'", "--", ";",
    "$1", "%(limit)s", ":limit", "client1@example.com' --", "*/ /*",
]  # fmt: skip
TEXT_FILTERS = ["q", "recipient", "sender", "message_id", "tag"]
OTHER_FILTERS = ["status", "from", "to", "cursor", "limit", "lang"]
TABLES = ["events", "fold_queue", "messages", "backfill_progress"]


def table_counts(db) -> dict[str, int]:
    return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


@pytest.fixture
def some_mail(db):
    now = datetime.now(UTC)
    return [insert_message(db, now - timedelta(minutes=n), tags=["devis"]) for n in range(3)]


@pytest.mark.parametrize("path", ["/api/messages", "/api/messages/counts", "/", "/rows",
                                  "/export.csv"])  # fmt: skip
def test_injections_in_every_filter_are_inert(secure_app, db, some_mail, path):
    secure_app.testing = False  # an exception is a 500 answer here, as in production
    client = secure_app.test_client()
    if path.startswith("/api"):
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_TOKEN}"
    else:
        assert client.post("/login", data={"password": UI_PASSWORD}).status_code == 302
    before = table_counts(db)
    failures, answered = [], {200: 0, 400: 0}
    for name in TEXT_FILTERS + OTHER_FILTERS:
        for value in INJECTIONS:
            response = client.get(path, query_string={name: value})
            response.get_data()  # the CSV is streamed: its rows are read as it is consumed
            status = response.status_code
            if status not in (200, 400):
                failures.append((name, value, status))
                continue
            answered[status] += 1
            if status == 200 and name in TEXT_FILTERS:
                # None of the mails holds any of these strings: nothing may come back.
                if path == "/api/messages" and response.get_json()["items"]:
                    failures.append((name, value, "rows came back"))
                if path == "/api/messages/counts" and any(response.get_json()["counts"].values()):
                    failures.append((name, value, "counted rows"))
    for value in INJECTIONS:  # the id in the path, too
        if path == "/api/messages":
            status = client.get(f"/api/messages/{value}").status_code
            if status not in (400, 404):
                failures.append(("<key>", value, status))
    print(f"\nSECURITY injections on {path}: {sum(answered.values())} requests, "
          f"{answered[200]} answered 200, {answered[400]} answered 400")  # fmt: skip
    assert failures == []
    assert table_counts(db) == before


@pytest.mark.parametrize("path", ["/api/messages", "/api/messages/counts", "/", "/rows",
                                  "/export.csv"])  # fmt: skip
def test_a_nul_in_a_filter_is_a_400(secure_app, some_mail, path):
    secure_app.testing = False
    client = secure_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {API_TOKEN}"
    client.post("/login", data={"password": UI_PASSWORD})
    statuses = {}
    for name in TEXT_FILTERS:
        response = client.get(path, query_string={name: "a\x00b"})
        response.get_data()
        statuses[name] = response.status_code
    assert statuses == dict.fromkeys(TEXT_FILTERS, 400)


# --- the database role the service runs as cannot change the log ------------------------


@pytest.fixture
def app_role_url(database_url):
    """A login role that is a member of distribmail_app (schema.sql), and a URL for it."""
    role = f"dm_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'distribmail_app'")
        if exists.fetchone() is None:
            pytest.skip("schema.sql made no distribmail_app role (the test user may not)")
        conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE distribmail_app")  # type: ignore[arg-type]
    params = conninfo_to_dict(database_url)
    params["user"] = role
    yield make_conninfo(**params)  # type: ignore[arg-type]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        conn.execute(f"DROP ROLE IF EXISTS {role}")  # type: ignore[arg-type]


REFUSED = [
    "UPDATE events SET recipient = 'someone@else.fr'",
    "DELETE FROM events",
    "TRUNCATE events",
    "TRUNCATE events_undated",
    "DELETE FROM events_undated",
    "CREATE TABLE events_copy (id bigint)",
    "DROP TABLE messages",
    "ALTER TABLE events DISABLE TRIGGER ALL",
]


@pytest.mark.parametrize("statement", REFUSED, ids=lambda s: s.split(" (")[0][:40])
def test_the_app_role_may_not_change_the_log(app_role_url, make_app, db, statement):
    client = make_app(DISTRIBMAIL_DATABASE_URL=app_role_url,
                      DISTRIBMAIL_SCHEMA_APPLIED_TO=app_role_url).test_client()  # fmt: skip
    webhook = client.post("/webhooks/brevo", json=event(), headers=bearer(TEST_TOKENS[0]))
    assert webhook.status_code == 200
    with (
        psycopg.connect(app_role_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
    ):
        conn.execute(statement)  # type: ignore[arg-type]
    # Refused by the grants, before any trigger ("append-only" is the trigger's word).
    assert "permission denied" in str(refused.value) or "must be owner" in str(refused.value)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_the_app_role_does_the_service_s_work(app_role_url, make_app, db):
    """Append (webhook and a new month's partition), fold, read: all as distribmail_app."""
    app = make_app(
        DISTRIBMAIL_DATABASE_URL=app_role_url,
        DISTRIBMAIL_SCHEMA_APPLIED_TO=app_role_url,  # the owner applied the schema
        DISTRIBMAIL_API_TOKENS=API_TOKEN,
        DISTRIBMAIL_PROJECTOR="off",
    )
    client = app.test_client()
    later = datetime.now(UTC) + timedelta(days=100)  # a month without a partition yet
    far = int(later.timestamp() * 1000)
    now = int(datetime.now(UTC).timestamp() * 1000)
    bodies = [[event("request", ts_epoch=now), event("delivered", ts_epoch=now + 1)],
              event("opened", ts_epoch=far)]  # fmt: skip
    for body in bodies:
        answer = client.post("/webhooks/brevo", json=body, headers=bearer(TEST_TOKENS[0]))
        assert answer.status_code == 200 and "spooled" not in answer.get_json()
    placed = db.execute("SELECT tableoid::regclass::text FROM events WHERE event = 'opened'")
    assert placed.fetchone()[0] == f"events_{later:%Y_%m}"  # made on demand, as the owner
    with psycopg.connect(app_role_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] != "postgres"
        assert drain(conn) == 1
    listed = client.get("/api/messages", headers=bearer(API_TOKEN)).get_json()["items"]
    assert [item["status"] for item in listed] == ["opened"]
    detail = client.get(f"/api/messages/{listed[0]['id']}", headers=bearer(API_TOKEN))
    assert detail.status_code == 200


def test_the_app_role_keeps_its_privileges_after_a_replay(app_role_url, database_url, make_app):
    client = make_app(DISTRIBMAIL_DATABASE_URL=app_role_url,
                      DISTRIBMAIL_SCHEMA_APPLIED_TO=app_role_url).test_client()  # fmt: skip
    client.post("/webhooks/brevo", json=event(), headers=bearer(TEST_TOKENS[0]))
    replay(database_url)  # as the owner, as documented
    with psycopg.connect(app_role_url, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM messages")
        assert drain(conn) >= 0


# --- secrets stay out of logs and pages --------------------------------------------------


def exercise(post, get) -> list[tuple[int, bytes, str]]:
    """Every kind of request carrying a secret, right and wrong; (status, body, headers)."""
    answers = [
        post("/webhooks/brevo", bearer(TEST_TOKENS[0]), json.dumps(event())),
        post("/webhooks/brevo", bearer(WRONG), json.dumps(event())),
        post("/webhooks/brevo", basic(*BASIC), json.dumps(event("opened"))),
        post("/webhooks/brevo", basic(BASIC[0], WRONG), "{}"),
        post("/webhooks/brevo", bearer(TEST_TOKENS[1]), b'{"not json'),
        post("/webhooks/brevo", bearer(TEST_TOKENS[1]), b'{"event": 1e400}'),
        get("/api/messages", bearer(API_TOKEN)),
        get("/api/messages", bearer(WRONG)),
        get("/api/messages?from=nonsense", bearer(API_TOKEN)),
        get("/api/messages/" + "0" * 24, bearer(API_TOKEN)),
        get("/metrics", bearer(API_TOKEN)),
        get("/metrics", bearer(WRONG)),
        get("/no/such/page", bearer(API_TOKEN)),
        post("/login", {"Content-Type": "application/x-www-form-urlencoded"},
             f"password={WRONG}"),
        post("/login", {"Content-Type": "application/x-www-form-urlencoded"},
             f"password={UI_PASSWORD}"),
    ]  # fmt: skip
    return answers


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_no_secret_in_logs_or_pages_in_process(secure_app, caplog):
    client = secure_app.test_client()
    caplog.set_level("DEBUG")

    def post(path, headers, body):
        r = client.post(path, headers={"Content-Type": "application/json", **headers}, data=body)
        return r.status_code, r.get_data(), str(r.headers)

    def get(path, headers):
        r = client.get(path, headers=headers)
        return r.status_code, r.get_data(), str(r.headers)

    answers = exercise(post, get)
    assert [s for s, _, _ in answers if s >= 500] == []
    for status, body, headers in answers:
        # Set-Cookie carries the signed session: signed with the key, never the key itself.
        assert leaked(body.decode("utf-8", "replace") + headers) == [], status
    assert caplog.records, "nothing was logged: the test would prove nothing"
    assert leaked(caplog.text) == []


def test_no_secret_in_the_served_output(database_url):
    env = {**settings(database_url), "DISTRIBMAIL_WEBHOOK_TOKENS": ",".join(TEST_TOKENS),
           "DISTRIBMAIL_LOG_LEVEL": "DEBUG"}  # fmt: skip
    served = Served(env)
    session = requests.Session()
    try:

        def post(path, headers, body):
            r = session.post(served.url + path, data=body, timeout=30,
                             headers={"Content-Type": "application/json", **headers})  # fmt: skip
            return r.status_code, r.content, str(r.headers)

        def get(path, headers):
            r = session.get(served.url + path, headers=headers, timeout=30)
            return r.status_code, r.content, str(r.headers)

        answers = exercise(post, get)
    finally:
        served.stop()
        output = served.output()
        served.cleanup()
    assert [s for s, _, _ in answers if s >= 500] == []
    for status, body, headers in answers:
        assert leaked(body.decode("utf-8", "replace") + headers) == [], status
    assert "/webhooks/brevo" in output, "the access log is missing: nothing was checked"
    assert leaked(output) == []


def test_the_app_role_starts_the_service_without_applying_the_schema(
    app_role_url, make_app, caplog
):
    client = make_app(DISTRIBMAIL_DATABASE_URL=app_role_url).test_client()
    response = client.post("/webhooks/brevo", json=event(), headers=bearer(TEST_TOKENS[0]))
    assert response.get_json()["stored"] == 1
    assert "schema not applied: this user does not own the tables" in caplog.text


def test_db_init_as_the_app_role_says_to_run_it_as_the_owner(app_role_url, monkeypatch, capsys):
    from distribmail.cli import main

    monkeypatch.setenv("DISTRIBMAIL_DATABASE_URL", app_role_url)
    assert main(["db", "init"]) == 2
    assert "run `distribmail db init` as the owner of the tables" in capsys.readouterr().err
