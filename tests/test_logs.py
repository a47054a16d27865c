"""JSON logs: one object per line, a request id echoed back, and never a secret."""

from __future__ import annotations

import json
import logging
import logging.handlers

import pytest

from distribmail.logs import Redactor, secrets_in_env
from tests.payloads import event

API_TOKEN = "api-token-that-must-not-leak"
DB_PASSWORD = "db-password-that-must-not-leak"


@pytest.fixture
def app(make_app):
    app = make_app(DISTRIBMAIL_API_TOKENS=API_TOKEN, DISTRIBMAIL_PROJECTOR="off")
    if not any(f.__name__ == "start_request" for f in app.before_request_funcs.get(None, [])):
        pytest.skip("create_app does not call distribmail.logs.install_logging yet")
    return app


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_request_writes_one_json_line_with_its_id(app, capsys, auth_headers):
    capsys.readouterr()
    response = app.test_client().post(
        "/webhooks/brevo",
        data=json.dumps(event()),
        headers={**auth_headers, "X-Request-Id": "req-1234-abcd"},
    )
    assert response.headers["X-Request-Id"] == "req-1234-abcd"
    (line,) = [
        d for d in json_lines(capsys.readouterr().err) if d["logger"] == "distribmail.access"
    ]
    assert line["request_id"] == "req-1234-abcd"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/webhooks/brevo", 200)
    assert line["level"] == "INFO" and line["duration_ms"] >= 0
    assert line["time"].endswith("+00:00")
    assert line["client"] == "127.0.0.1"


@pytest.mark.parametrize(
    "given",
    ["", "short", "x" * 200, "has spaces in it", 'quote"and\\backslash', "tab\tinside-123456"],
    ids=["none", "too-short", "too-long", "spaces", "quotes", "tab"],
)
def test_an_odd_request_id_is_replaced(app, given):
    response = app.test_client().get("/healthz", headers={"X-Request-Id": given})
    assert response.headers["X-Request-Id"] != given
    assert len(response.headers["X-Request-Id"]) == 32


def test_lines_written_during_a_request_carry_its_id(app, capsys):
    @app.get("/test-log-inside")
    def inside():
        logging.getLogger("some.module").warning("something odd")
        return "ok"

    capsys.readouterr()
    app.test_client().get("/test-log-inside", headers={"X-Request-Id": "inner-request-1"})
    lines = json_lines(capsys.readouterr().err)
    odd = next(d for d in lines if d["message"] == "something odd")
    assert odd["request_id"] == "inner-request-1" and odd["logger"] == "some.module"


def test_no_secret_reaches_the_logs_or_the_error_pages(make_app, app_config, capsys):
    url = app_config["DISTRIBMAIL_DATABASE_URL"]
    app = make_app(
        DISTRIBMAIL_API_TOKENS=API_TOKEN,
        DISTRIBMAIL_PROJECTOR="off",
        DISTRIBMAIL_BREVO_API_KEY="xkeysib-brevo-key-that-must-not-leak",
    )
    if not any(f.__name__ == "start_request" for f in app.before_request_funcs.get(None, [])):
        pytest.skip("create_app does not call distribmail.logs.install_logging yet")
    app.config["TESTING"] = False  # let a 500 be a 500, as in production

    @app.get("/test-boom")
    def boom():
        raise RuntimeError(f"failed with Bearer {API_TOKEN} on postgresql://app:{DB_PASSWORD}@db/x")

    client = app.test_client()
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    capsys.readouterr()
    pages = [
        # a webhook with a good token and a bad body; with a wrong token; with an API token
        client.post("/webhooks/brevo", data=b"not json",
                    headers={"Authorization": "Bearer token-current"}),
        client.post("/webhooks/brevo", data=b"{}", headers=api),
        client.get("/api/messages?from=nonsense", headers=api),
        client.get("/test-boom", headers=api),
        client.get("/metrics", headers={"Authorization": "Bearer token-next"}),
    ]  # fmt: skip
    logging.getLogger("test").warning("connecting to %s", url.replace("@", f":{DB_PASSWORD}@", 1))
    logging.getLogger("test").error("brevo said: api-key: xkeysib-brevo-key-that-must-not-leak")
    logging.getLogger("test").info("dsn host=db user=app password=%s", DB_PASSWORD)
    output = capsys.readouterr().err

    assert [p.status_code for p in pages] == [400, 401, 400, 500, 401]
    assert "RuntimeError" in output and "[redacted]" in output  # the traceback is there
    secrets = ["token-current", "token-next", API_TOKEN, DB_PASSWORD, "xkeysib-brevo-key"]
    for secret in secrets:
        assert secret not in output
        for page in pages:
            assert secret.encode() not in page.data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123", "Authorization: Bearer [redacted]"),
        ("basic dXNlcjpwYXNz", "basic [redacted]"),
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app:[redacted]@db:5432/x"),
        ("host=db password='a b c' dbname=x", "host=db password=[redacted] dbname=x"),
        ("api-key=abcdef", "api-key=[redacted]"),
        ("nothing to hide here", "nothing to hide here"),
    ],
    ids=["bearer", "basic", "url-password", "libpq-password", "api-key", "plain"],
)
def test_secret_shapes_are_redacted(text, expected):
    assert Redactor()(text) == expected


def test_configured_secrets_are_collected_from_the_environment():
    env = {
        "DISTRIBMAIL_WEBHOOK_TOKENS": "tok-one, tok-two",
        "DISTRIBMAIL_WEBHOOK_BASIC_AUTH": "brevo:pass-word",
        "DISTRIBMAIL_DATABASE_URL": "postgresql://u:pg-pass@h/db",
        "DISTRIBMAIL_TIMEZONE": "Europe/Paris",
        "HOME": "/root",
    }
    found = set(secrets_in_env(env))
    assert {"tok-one", "tok-two", "pass-word", "pg-pass"} <= found
    assert "Europe/Paris" not in found
    assert Redactor(found)("tok-two and pass-word") == "[redacted] and [redacted]"


@pytest.mark.parametrize(
    ("path", "request_id", "secret"),
    [
        (f"/api/messages/{API_TOKEN}", "req-plain-0001", API_TOKEN),
        ("/webhooks/password=hunter2-secret", "req-plain-0002", "hunter2-secret"),
        ('/x/token="quoted-secret-1"', "req-plain-0003", "quoted-secret-1"),
        ("/healthz", f"id-{API_TOKEN}", API_TOKEN),
        ("/healthz", "postgresql://app:id-secret-99@db/x", "id-secret-99"),
    ],
    ids=["token-in-path", "password-in-path", "quoted-in-path", "token-in-id", "url-in-id"],
)
def test_the_request_line_keeps_secrets_out_of_its_fields(app, capsys, path, request_id, secret):
    capsys.readouterr()
    app.test_client().get(path, headers={"X-Request-Id": request_id})
    output = capsys.readouterr().err
    assert secret not in output
    (line,) = [d for d in json_lines(output) if d["logger"] == "distribmail.access"]
    assert "[redacted]" in line["path"] + line["request_id"] + line["message"]
    assert line["method"] == "GET" and isinstance(line["status"], int)


def test_remembered_scrubbing_learns_new_secrets_and_keeps_no_long_values():
    redact = Redactor(["first-secret"])
    assert redact.value("/x/first-secret") == "/x/[redacted]"
    assert redact.value("/x/later-secret") == "/x/later-secret"
    redact.add(["later-secret"])  # a secret learnt afterwards is not missed by the memo
    assert redact.value("/x/later-secret") == "/x/[redacted]"
    long_path = "/x/" + "a" * 500 + "/first-secret"
    assert redact.value(long_path) == redact(long_path) and long_path not in redact._memo


def test_the_request_line_skips_the_logging_machinery_only_when_nothing_else_listens(
    monkeypatch, capsys
):
    # With our handler alone on the way, the request line is built without a LogRecord;
    # with any other handler there (pytest's caplog, an embedder's file), it goes as a
    # record, so that handler gets it. Both ways write the same line.
    from distribmail.logs import JsonFormatter, _OurHandler, _RequestLog

    redact = Redactor([API_TOKEN])
    ours = _OurHandler()
    ours.setFormatter(JsonFormatter(redact))
    top = logging.getLogger("test-direct")
    top.propagate = False
    monkeypatch.setattr(top, "handlers", [ours])
    request_log = _RequestLog(redact, ())
    request_log.access = logging.getLogger("test-direct.access")
    request_log.access.setLevel(logging.INFO)

    def line(given_id: str) -> dict:
        served = request_log.start(given_id)
        try:
            request_log.finish(served, "GET", f"/x/{API_TOKEN}", 200, "10.0.0.1", None)
        finally:
            request_log.forget(served)
        (written,) = json_lines(capsys.readouterr().err)
        return written

    def no_records(*args, **kwargs):
        raise AssertionError("a LogRecord was made")

    with monkeypatch.context() as m:
        m.setattr(logging.Logger, "makeRecord", no_records)
        direct = line("req-direct-0001")
    other = logging.handlers.MemoryHandler(capacity=10)
    monkeypatch.setattr(top, "handlers", [ours, other])
    as_record = line("req-direct-0001")
    assert [r.getMessage() for r in other.buffer] == ["GET /x/[redacted] 200"]
    for varying in ("time", "duration_ms"):
        del direct[varying], as_record[varying]
    assert direct == as_record
    assert direct["path"] == "/x/[redacted]" and direct["request_id"] == "req-direct-0001"
