"""The screen's login against guessing (query.login_throttle), and its session cookie's
Secure flag (set when the browser came over https, told by a trusted proxy)."""

from __future__ import annotations

from html import unescape
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from query.login_throttle import LoginThrottle
from query.screen import SCREEN
from tests.screen_support import PASSWORD, build_screen_app

PROXY = "10.0.0.5"


@pytest.fixture
def screen_app(make_app: Any, app_config: dict[str, str]) -> Flask:
    return build_screen_app(make_app, app_config, DISTRIBMAIL_TRUSTED_PROXIES=f"{PROXY}/32")


def client_from(app: Flask, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the throttle alone --------------------------------------------------------------------


def test_the_throttle_refuses_after_the_allowed_failures_until_the_window_passes() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("a") == 0
        throttle.failed("a")
        clock.now += 1
    # Now t=1003; the first failure (t=1000) leaves the window at t=1060.
    assert throttle.retry_after("a") == 57
    assert throttle.retry_after("b") == 0  # others are not held back
    clock.now = 1060
    assert throttle.retry_after("a") == 0  # one failure left the window: one more try


def test_a_success_forgets_the_failures() -> None:
    throttle = LoginThrottle(max_failures=2, window=60, clock=Clock())
    throttle.failed("a")
    throttle.succeeded("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 0


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=1, window=60, max_clients=3, clock=clock)
    for n in range(5):
        throttle.failed(f"client-{n}")
        clock.now += 1
    assert len(throttle._failures) == 3
    # The ones that failed longest ago were forgotten; the latest still wait.
    assert throttle.retry_after("client-0") == 0
    assert throttle.retry_after("client-4") > 0


# --- through the login page ----------------------------------------------------------------


def test_ten_wrong_passwords_from_one_address_then_even_the_right_one_waits(
    screen_app: Flask,
) -> None:
    attacker = client_from(screen_app, "203.0.113.7")
    for _ in range(10):
        assert attacker.post("/login", data={"password": "guess"}).status_code == 401
    refused = attacker.post("/login", data={"password": PASSWORD})
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 300
    assert "Trop d'essais depuis cette adresse" in unescape(refused.text)
    assert "Set-Cookie" not in refused.headers
    # Someone else, elsewhere, signs in as usual.
    assert (
        client_from(screen_app, "198.51.100.1")
        .post("/login", data={"password": PASSWORD})
        .status_code
        == 302
    )


def test_behind_the_trusted_proxy_the_throttle_counts_the_real_client(
    screen_app: Flask,
) -> None:
    via_proxy = client_from(screen_app, PROXY)
    for _ in range(10):
        via_proxy.post(
            "/login", data={"password": "guess"}, headers={"X-Forwarded-For": "203.0.113.7"}
        )
    blocked = via_proxy.post(
        "/login", data={"password": PASSWORD}, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    other = via_proxy.post(
        "/login", data={"password": PASSWORD}, headers={"X-Forwarded-For": "198.51.100.1"}
    )
    assert (blocked.status_code, other.status_code) == (429, 302)


def test_a_success_before_the_limit_starts_the_count_again(screen_app: Flask) -> None:
    user = client_from(screen_app, "203.0.113.8")
    for _ in range(9):
        user.post("/login", data={"password": "typo"})
    assert user.post("/login", data={"password": PASSWORD}).status_code == 302
    throttle: LoginThrottle = screen_app.extensions[SCREEN].throttle
    assert throttle.retry_after("203.0.113.8") == 0
    assert "203.0.113.8" not in throttle._failures


# --- the session cookie's Secure flag -----------------------------------------------------


def set_cookie_of(client: FlaskClient, base_url: str = "http://localhost", **headers: str) -> str:
    response = client.post(
        "/login", data={"password": PASSWORD}, headers=headers, base_url=base_url
    )
    assert response.status_code == 302
    cookie: str = response.headers["Set-Cookie"]
    return cookie


def test_over_plain_http_the_cookie_is_not_secure(screen_app: Flask) -> None:
    # The quick start on http://localhost: a Secure cookie would never come back.
    assert "Secure" not in set_cookie_of(client_from(screen_app, "127.0.0.1"))


def test_over_https_the_cookie_is_secure(screen_app: Flask) -> None:
    client = client_from(screen_app, "127.0.0.1")
    assert "; Secure" in set_cookie_of(client, base_url="https://localhost")


def test_the_trusted_proxy_saying_https_makes_the_cookie_secure(screen_app: Flask) -> None:
    cookie = set_cookie_of(client_from(screen_app, PROXY), **{"X-Forwarded-Proto": "https"})
    assert "; Secure" in cookie


def test_anyone_else_saying_https_does_not(screen_app: Flask) -> None:
    cookie = set_cookie_of(client_from(screen_app, "203.0.113.9"), **{"X-Forwarded-Proto": "https"})
    assert "Secure" not in cookie
