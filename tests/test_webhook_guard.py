"""What the webhook refuses, and that a refusal stores nothing: auth, source, shape, size."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import TEST_TOKENS
from tests.payloads import event

BODY = json.dumps(event())


def count(db) -> int:
    return db.execute("SELECT count(*) FROM events").fetchone()[0]


def basic(user_password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_password.encode()).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credentials"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
        pytest.param({"Authorization": f"Bearer {TEST_TOKENS[0]}x"}, id="token-prefix"),
        pytest.param({"Authorization": TEST_TOKENS[0]}, id="no-scheme"),
        pytest.param(basic(f"x:{TEST_TOKENS[0]}"), id="basic-when-only-tokens"),
        pytest.param({"Authorization": "Basic !!notbase64"}, id="broken-basic"),
    ],
)
def test_wrong_or_missing_credentials_are_401_and_store_nothing(client, db, headers):
    response = client.post("/webhooks/brevo", data=BODY, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="distribmail"'
    assert "credentials" in response.get_json()["error"]
    assert count(db) == 0


@pytest.mark.parametrize("token", TEST_TOKENS, ids=["current", "next"])
def test_either_token_works_during_a_rotation(client, db, token):
    response = client.post(
        "/webhooks/brevo", data=BODY, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert count(db) == 1


def test_basic_auth(make_app, db):
    client = make_app(
        DISTRIBMAIL_WEBHOOK_TOKENS="", DISTRIBMAIL_WEBHOOK_BASIC_AUTH="brevo:s3cret,brevo:n3xt"
    ).test_client()
    assert client.post("/webhooks/brevo", data=BODY, headers=basic("brevo:n3xt")).status_code == 200
    refused = client.post("/webhooks/brevo", data=BODY, headers=basic("brevo:guess"))
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="distribmail"'
    assert count(db) == 1


def test_without_configured_credentials_a_token_is_generated_and_required(make_app, tmp_path, db):
    client = make_app(DISTRIBMAIL_WEBHOOK_TOKENS="", DISTRIBMAIL_DATA_DIR=str(tmp_path / "gen"))
    token = (tmp_path / "gen" / "webhook-token").read_text().strip()
    assert len(token) >= 40
    assert (tmp_path / "gen" / "webhook-token").stat().st_mode & 0o077 == 0
    client = client.test_client()
    assert client.post("/webhooks/brevo", data=BODY).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/webhooks/brevo", data=BODY, headers=auth).status_code == 200


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "allowed"),
    [
        pytest.param("1.179.112.9", None, "", True, id="brevo-range"),
        pytest.param("8.8.8.8", None, "", False, id="outside"),
        pytest.param("8.8.8.8", "1.179.112.9", "", False, id="forged-xff-untrusted-peer"),
        pytest.param("127.0.0.1", "1.179.112.9", "127.0.0.1/32", True, id="via-trusted-proxy"),
        pytest.param("127.0.0.1", "8.8.8.8", "127.0.0.1/32", False, id="proxy-says-outside"),
        pytest.param("127.0.0.1", "1.179.112.9, 8.8.8.8", "127.0.0.1/32", False,
                     id="rightmost-untrusted-hop-counts"),
        pytest.param("127.0.0.1", "garbage", "127.0.0.1/32", False, id="broken-xff"),
    ],
)  # fmt: skip
def test_source_allow_list(make_app, db, auth_headers, remote, forwarded, trusted, allowed):
    client = make_app(
        DISTRIBMAIL_WEBHOOK_ALLOW_CIDRS="1.179.112.0/20,172.246.240.0/20",
        DISTRIBMAIL_TRUSTED_PROXIES=trusted,
    ).test_client()
    headers = dict(auth_headers, **({"X-Forwarded-For": forwarded} if forwarded else {}))
    response = client.post(
        "/webhooks/brevo", data=BODY, headers=headers, environ_base={"REMOTE_ADDR": remote}
    )
    assert response.status_code == (200 if allowed else 403)
    assert count(db) == (1 if allowed else 0)


def test_allow_list_is_checked_before_credentials(make_app, db):
    client = make_app(DISTRIBMAIL_WEBHOOK_ALLOW_CIDRS="10.0.0.0/8").test_client()
    response = client.post("/webhooks/brevo", data=BODY, environ_base={"REMOTE_ADDR": "8.8.8.8"})
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"not json", "not JSON", id="text"),
        pytest.param(b'{"event": "delivered"', "not JSON", id="truncated"),
        pytest.param(b"\xff\xfe{}", "not JSON", id="invalid-utf8"),
        pytest.param(b'{"ts_epoch": NaN}', "not JSON", id="nan"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep-nesting"),
        pytest.param(b"42", "JSON int", id="number"),
        pytest.param(b'"delivered"', "JSON str", id="string"),
        pytest.param(b"null", "JSON NoneType", id="null"),
        pytest.param(
            b'[{"event": "delivered"}, 3]', "item 1 of the list is a int", id="list-mixed"
        ),
        pytest.param(b"[[]]", "item 0 of the list is a list", id="list-of-lists"),
        pytest.param(b"", "not JSON", id="empty"),
    ],
)
def test_bad_bodies_are_400_and_store_nothing(client, db, auth_headers, body, message):
    response = client.post("/webhooks/brevo", data=body, headers=auth_headers)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert count(db) == 0


def test_body_over_the_limit_is_413(make_app, db, auth_headers):
    client = make_app(DISTRIBMAIL_MAX_BODY="1KiB").test_client()
    big = json.dumps([event(ts_epoch=1685543827000 + i) for i in range(20)])
    assert len(big) > 1024
    response = client.post("/webhooks/brevo", data=big, headers=auth_headers)
    assert response.status_code == 413
    assert "DISTRIBMAIL_MAX_BODY" in response.get_json()["error"]
    assert count(db) == 0
