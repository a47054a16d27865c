"""The webhook's POST, served as plain WSGI before Flask (ingest.webhook_wsgi): the same
request id, request line, metrics and answers as any route Flask serves."""

from __future__ import annotations

import io
import json
import logging

import pytest

from ingest.errors import PayloadTooLarge
from ingest.webhook_wsgi import read_body
from tests.payloads import event


def test_the_webhook_gets_a_request_id_a_request_line_and_no_cookie(client, auth_headers, caplog):
    caplog.set_level(logging.INFO, logger="distribmail.access")
    given = "nginx-4f2a9c1e0b7d"
    response = client.post(
        "/webhooks/brevo",
        json=event(),
        headers={**auth_headers, "X-Request-Id": given, "X-Forwarded-For": "203.0.113.9"},
    )
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == given
    assert response.headers["Content-Type"] == "application/json"
    assert response.data == b'{"duplicates":0,"received":1,"stored":1}\n'
    assert "Set-Cookie" not in response.headers
    (line,) = [r for r in caplog.records if r.name == "distribmail.access"]
    assert (line.method, line.path, line.status) == ("POST", "/webhooks/brevo", 200)
    assert line.getMessage() == "POST /webhooks/brevo 200"
    assert line.duration_ms >= 0


def test_the_webhook_is_timed_under_its_route(client, auth_headers):
    from distribmail.metrics import _get

    metrics = _get()
    requests = metrics.child(metrics.requests, "/webhooks/<provider>", "POST", "401")
    before = requests._value.get()
    assert client.post("/webhooks/brevo", json=event()).status_code == 401
    assert requests._value.get() == before + 1


def test_errors_are_answered_as_the_flask_routes_answer_them(client, auth_headers):
    refused = client.post("/webhooks/brevo", json=event())
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in refused.get_json()
    not_json = client.post("/webhooks/brevo", data=b"{", headers=auth_headers)
    assert not_json.status_code == 400
    assert not_json.get_json()["error"].startswith("the body is not JSON")
    # Not ours: Flask answers, as before.
    unknown = client.post("/webhooks/nobody", json=event(), headers=auth_headers)
    assert unknown.status_code == 404
    assert "no provider named 'nobody'" in unknown.get_json()["error"]
    check = client.get("/webhooks/brevo")
    assert check.get_json() == {"provider": "brevo", "ready": True}


def test_a_bug_is_logged_and_answered_500_in_json(app, client, auth_headers, caplog):
    receiver = app.extensions["distribmail.receiver"]

    def broken(provider: str, body: bytes, source: str = "webhook"):
        raise RuntimeError("a bug")

    receiver.receive = broken
    response = client.post("/webhooks/brevo", json=event(), headers=auth_headers)
    assert response.status_code == 500
    assert response.get_json()["error"].startswith("The server encountered an internal error")
    assert response.headers["X-Request-Id"]
    logged = [r for r in caplog.records if r.name == "ingest.web" and r.exc_info]
    assert [str(r.exc_info[1]) for r in logged] == ["a bug"]


def environ(body: bytes, **extra: object) -> dict[str, object]:
    return {"wsgi.input": io.BytesIO(body), **extra}


def test_the_body_is_read_as_werkzeug_reads_it():
    payload = json.dumps(event()).encode()
    assert read_body(environ(payload, CONTENT_LENGTH=str(len(payload))), 1000) == payload
    # Content-Length is a promise: bytes past it are not the body.
    assert read_body(environ(payload + b"junk", CONTENT_LENGTH=str(len(payload))), 1000) == payload
    # Chunked (no length): read to the end when the server says the stream ends.
    assert read_body(environ(payload, **{"wsgi.input_terminated": True}), 1000) == payload
    # Neither: nothing can be read safely.
    assert read_body(environ(payload), 1000) == b""
    assert read_body(environ(payload, CONTENT_LENGTH="bogus"), 1000) == b""


@pytest.mark.parametrize(
    "extra",
    [{"CONTENT_LENGTH": "1001"}, {"wsgi.input_terminated": True}],
    ids=["announced", "chunked"],
)
def test_a_body_over_the_limit_is_refused(extra):
    with pytest.raises(PayloadTooLarge, match="over the 1000-byte limit"):
        read_body(environ(b"x" * 1001, **extra), 1000)
