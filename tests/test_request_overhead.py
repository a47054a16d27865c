"""What the busy routes no longer pay for, and what they still answer: the screen's session
is opened on the screen's paths only, and the webhook's answer is the same bytes as
Flask's jsonify gave."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask import Flask, session

from tests.payloads import event
from tests.screen_support import build_screen_app, sign_in


@pytest.fixture
def screen_app(make_app: Any, app_config: dict[str, str]) -> Flask:
    return build_screen_app(make_app, app_config)


def opens_a_session(app: Flask, path: str) -> bool:
    with app.test_request_context(path):
        return not app.session_interface.is_null_session(session._get_current_object())


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", True),
        ("/login", True),
        ("/rows", True),
        ("/export.csv", True),
        ("/messages/0123456789abcdef01234567", True),
        ("/static/screen/screen.css", True),
        ("/webhooks/brevo", False),
        ("/api/messages", False),
        ("/metrics", False),
        ("/healthz", False),
        ("/readyz", False),
    ],
    ids=lambda v: str(v),
)
def test_the_session_is_opened_on_the_screen_s_paths_only(screen_app, path, expected):
    assert opens_a_session(screen_app, path) is expected


def test_every_screen_route_has_its_session(screen_app):
    rules = [r for r in screen_app.url_map.iter_rules() if r.endpoint.startswith("screen.")]
    assert len(rules) >= 6
    for rule in rules:
        path = re.sub(r"<[^>]+>", "x", rule.rule)
        assert opens_a_session(screen_app, path), rule.rule


def test_the_signing_serializer_is_built_once_per_key(screen_app):
    sessions = screen_app.session_interface
    first = sessions.get_signing_serializer(screen_app)
    assert sessions.get_signing_serializer(screen_app) is first
    client = screen_app.test_client()
    sign_in(client)
    assert client.get("/").status_code == 200
    screen_app.secret_key = b"another-secret-key"  # a rotated key: old cookies are refused
    assert sessions.get_signing_serializer(screen_app) is not first
    assert client.get("/").status_code == 302


def test_a_webhook_sets_no_cookie_even_for_a_signed_in_browser(screen_app, auth_headers):
    client = screen_app.test_client()
    sign_in(client)
    response = client.post("/webhooks/brevo", data=json.dumps(event()), headers=auth_headers)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers and "Cookie" not in response.vary
    assert client.get("/").status_code == 200  # still signed in


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (json.dumps(event()).encode(), b'{"duplicates":0,"received":1,"stored":1}\n'),
        (b"[]", b'{"duplicates":0,"received":0,"stored":0}\n'),
    ],
    ids=["one-event", "empty-list"],
)
def test_the_webhook_answer_is_compact_sorted_json(client, auth_headers, body, expected):
    response = client.post("/webhooks/brevo", data=body, headers=auth_headers)
    assert response.status_code == 200
    assert response.data == expected
    assert response.headers["Content-Type"] == "application/json"
